"""Optional: py-spy on every service during a steady phase, and a summary of where their CPU time goes.

py-spy is not a project dependency: `pip install py-spy` into the virtual environment to use `--profile`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")
# py-spy shows the last two parts of a file's path; its first part says whose code it is.
OURS = {"kit", "registry", "incidents", "risk", "gateway", "contracts", "cli"}
LIBRARIES = {
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "asyncpg": "asyncpg",
    "nats": "nats",
    "aio": "nats",
    "js": "nats",
    "protocol": "nats",
    "uvicorn": "uvicorn/starlette/fastapi",
    "http": "uvicorn/starlette/fastapi",
    "middleware": "uvicorn/starlette/fastapi",
    "starlette": "uvicorn/starlette/fastapi",
    "fastapi": "uvicorn/starlette/fastapi",
    "dependencies": "uvicorn/starlette/fastapi",
    "trace": "opentelemetry",
    "context": "opentelemetry",
    "propagation": "opentelemetry",
    "attributes": "opentelemetry",
    "sdk": "opentelemetry",
    "_decorator.py": "opentelemetry",
    "telemetry": "opentelemetry",
    "jwt": "jwt",
    "json": "json (stdlib)",
    "orjson": "orjson",
    "asyncio": "event loop",
    "uvloop": "event loop",
    "threading.py": "threads (anyio pool)",
    "_backends": "threads (anyio pool)",
    "anyio": "threads (anyio pool)",
    "prometheus_client": "prometheus",
    "httpx": "httpx",
    "_client.py": "httpx",
    "httpcore": "httpx",
}


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """Records each service with `py-spy record --nonblocking` for a given number of seconds."""

    def __init__(self, out_dir: Path, pids: dict[str, int], *, rate: int = 100) -> None:
        binary = pyspy_binary()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.binary, self.out_dir, self.pids, self.rate = binary, Path(out_dir), pids, rate
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._running: list[tuple[subprocess.Popen, float]] = []
        self.files: dict[str, dict[str, Path]] = {}

    def start(self, label: str, seconds: float) -> None:
        files = self.files.setdefault(label, {})
        for name, pid in self.pids.items():
            out = self.out_dir / f"{label}-{name}.txt"
            files[name] = out
            proc = subprocess.Popen(
                [self.binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate",
                 str(self.rate), "--format", "raw", "--function", "--nonblocking", "--output", str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            self._running.append((proc, seconds))

    async def finish(self) -> None:
        """Wait for the recorders; stop any that outlive their duration by much."""
        for proc, seconds in self._running:
            for _ in range(int((seconds + 20) / 0.1)):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._running = []

    def summaries(self, top: int = 12) -> dict[str, dict[str, dict]]:
        return {
            label: {name: summarize(path, top=top) for name, path in files.items() if path.exists()}
            for label, files in self.files.items()
        }


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        frames.append((m["func"], m["file"]) if m else (raw, ""))
    return frames, int(count)


def _library(path: str) -> str:
    first = path.split("/", 1)[0]
    if first in OURS:
        return "jinshui"
    if path == "asyncio/runners.py":
        return "event loop (uvloop C code)"
    return LIBRARIES.get(first, "other")


def _short(func: str, path: str) -> str:
    parts = Path(path).parts
    keep = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({keep})"


def summarize(path: Path, *, top: int = 12) -> dict:
    """Busy samples (py-spy leaves out idle ones): self time by library and by function; time under our functions."""
    total = 0
    by_library: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in Path(path).read_text().splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        total += count
        func, file = frames[-1]
        by_library[_library(file)] += count
        self_time[_short(func, file)] += count
        for name in {_short(f, p) for f, p in frames if p.split("/", 1)[0] in OURS}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "self_by_library_pct": dict(share(by_library)),
        "self_top_pct": dict(share(self_time)),
        "inclusive_top_pct": dict(share(inclusive)),
        "file": str(path),
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.profile FILE…`: summarise py-spy raw files (as `--profile` keeps them)."""
    for path in argv if argv is not None else sys.argv[1:]:
        s = summarize(Path(path), top=15)
        print(f"{path}: {s['samples']} busy samples")
        print("  self by library: " + ", ".join(f"{k} {v}%" for k, v in s["self_by_library_pct"].items()))
        for k, v in s["self_top_pct"].items():
            print(f"  self  {v:5.1f}%  {k}")
        for k, v in s["inclusive_top_pct"].items():
            print(f"  under {v:5.1f}%  {k}")


if __name__ == "__main__":
    main()
