"""What the processes cost: CPU per steady phase (services, servers, the load generator) and resident memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


def _cpu_seconds(proc: psutil.Process, *, with_children: bool) -> float:
    try:
        t = proc.cpu_times()
        total = t.user + t.system
        if with_children:
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
        return total
    except psutil.Error:
        return 0.0


@dataclass
class Window:
    """CPU used over one measured window, in % of one core."""

    wall_s: float
    cpu_pct: dict[str, float]

    def as_dict(self) -> dict:
        cpu = {k: round(v, 1) for k, v in self.cpu_pct.items()}
        return {"wall_s": round(self.wall_s, 2), "cpu_pct_of_one_core": cpu}


@dataclass
class Watch:
    """The processes of a run: the four services, nats-server, the postmaster (with its backends), and us."""

    services: dict[str, int]
    nats_pid: int | None = None
    postgres_pid: int | None = None
    procs: dict[str, psutil.Process] = field(default_factory=dict)
    rss_idle: dict[str, float] = field(default_factory=dict)
    rss_peak: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> service -> MB
    _label: str | None = None
    _sampler: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in self.services.items()}
        if self.nats_pid:
            self.procs["nats-server"] = psutil.Process(self.nats_pid)
        if self.postgres_pid:
            self.procs["postgres"] = psutil.Process(self.postgres_pid)
        self.procs["loadgen"] = psutil.Process()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each process; `machine` is every CPU's busy time, whoever used it."""
        # The postmaster's backends, and a service's own workers (the registry's import parser) count as theirs.
        out = {name: _cpu_seconds(p, with_children=name != "loadgen") for name, p in self.procs.items()}
        t = psutil.cpu_times()
        out["machine"] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return out

    def rss(self) -> dict[str, float]:
        out = {}
        for name in self.services:
            with contextlib.suppress(psutil.Error):
                out[name] = self.procs[name].memory_info().rss / MB
        return out

    def begin(self) -> tuple[float, dict[str, float]]:
        return time.perf_counter(), self.cpu()

    def end(self, started: tuple[float, dict[str, float]]) -> Window:
        t0, cpu0 = started
        wall = time.perf_counter() - t0
        cpu1 = self.cpu()
        pct = {k: 100.0 * (cpu1[k] - cpu0.get(k, 0.0)) / wall for k in cpu1} if wall > 0 else {}
        if pct:
            # What processes outside this run (other work on a shared machine) took meanwhile.
            pct["others"] = max(0.0, pct.pop("machine") - sum(pct.values()))
        return Window(wall, pct)

    async def sample_idle(self, seconds: float = 1.0) -> dict[str, float]:
        samples = []
        for _ in range(max(1, int(seconds / 0.25))):
            samples.append(self.rss())
            await asyncio.sleep(0.25)
        self.rss_idle = {n: sorted(s[n] for s in samples)[len(samples) // 2] for n in self.services}
        return self.rss_idle

    @contextlib.asynccontextmanager
    async def load(self, label: str):
        """Sample resident memory every 0.25 s while a scenario puts the stack under load."""
        self._label = label
        peaks = self.rss_peak.setdefault(label, {})

        async def sample() -> None:
            while True:
                for name, mb in self.rss().items():
                    peaks[name] = max(peaks.get(name, 0.0), mb)
                await asyncio.sleep(0.25)

        self._sampler = asyncio.create_task(sample())
        try:
            yield
        finally:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            for name, mb in self.rss().items():
                peaks[name] = max(peaks.get(name, 0.0), mb)
