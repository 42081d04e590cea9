"""The embedded default as `jinshui up` runs it, under a temporary folder: NATS, PostgreSQL, the four services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import psutil

from bench.http import LeanHttp
from jinshui.cli._proc import process_alive
from jinshui.cli.embedded import NatsServer, PgServer, ensure_database, start_nats, start_postgres, stop_stale_servers
from jinshui.cli.stack import SERVICES, Stack
from jinshui.kit import natsconn
from jinshui.kit.tokens import issue_token

TMP_PREFIX = "jinshui-bench-"
DATABASE = "jinshui"

PIPELINE_METRICS = (
    "jinshui_consumer_batch_seconds_sum{",
    "jinshui_consumer_batch_seconds_count{",
    "jinshui_consumer_messages_total{",
    "jinshui_outbox_published_total{",
)


def pipeline_delta(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, dict]:
    """Per consumer: batches, messages, mean batch time and the share of the time it spent handling batches;
    per service: outbox events published per second."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, dict] = {}
    for key, value in delta.items():
        label = key[key.index('"') + 1 : key.index('"', key.index('"') + 1)]
        if key.startswith("jinshui_consumer_batch_seconds_count{") and value:
            busy = delta.get(key.replace("_count{", "_sum{"), 0.0)
            messages = sum(
                v for k, v in delta.items() if k.startswith(f'jinshui_consumer_messages_total{{consumer="{label}"')
            )
            out[label] = {
                "batches": int(value),
                "messages": int(messages),
                "mean_batch_ms": round(1000 * busy / value, 1),
                "busy_pct": round(100 * busy / seconds, 1),
            }
        elif key.startswith("jinshui_outbox_published_total{") and value:
            out[f"{label} outbox"] = {"published_per_s": round(value / seconds, 1)}
    return out


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def raise_open_files_limit() -> int:
    """Soft limit up to the hard one; the services inherit it (hundreds of desk connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def remove_stale_dirs(base: Path | None = None) -> list[Path]:
    """Stop the servers of bench runs that died and remove their folders."""
    removed = []
    for root in Path(base or tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            owner = json.loads((root / "owner.json").read_text())
            alive = process_alive(owner["pid"]) and psutil.Process(owner["pid"]).create_time() == owner["created"]
        except (FileNotFoundError, ValueError, KeyError, psutil.Error):
            alive = time.time() - root.stat().st_mtime < 3600
        if alive:
            continue
        stop_stale_servers(root)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


@dataclass(frozen=True)
class Beat:
    name: str
    grids: list[str]


@dataclass
class Households:
    """Registered households over the beats: a regular pool, and an urgent pool used once per alert."""

    regular: list[str] = field(default_factory=list)
    urgent: list[str] = field(default_factory=list)
    beats: int = 0
    seconds: float = 0.0


class BenchEnv:
    """Servers and services of one bench run; `close()` stops everything it started."""

    def __init__(self, *, log) -> None:
        self.log = log
        self.root: Path | None = None
        self.nats: NatsServer | None = None
        self.pg: PgServer | None = None
        self.database_url = ""
        self.stack: Stack | None = None
        self.nc = None
        self.js = None
        self.http: httpx.AsyncClient | None = None  # setup and checks
        self.lean: LeanHttp | None = None  # the scenarios' requests
        self.households = Households()

    # --- servers --------------------------------------------------------------------------------
    def start_servers(self) -> None:
        """NATS (sync_interval always) and PostgreSQL (its defaults) under a fresh temporary folder."""
        for stale in remove_stale_dirs():
            self.log(f"removed a dead bench run's folder {stale}")
        self.root = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        self.root.chmod(0o755)
        me = psutil.Process()
        (self.root / "owner.json").write_text(json.dumps({"pid": me.pid, "created": me.create_time()}))
        # Called from the main thread: nats-server dies with the thread that started it.
        self.nats = start_nats(self.root / "nats", sync_always=True)
        self.pg = start_postgres(self.root / "pg")

    async def open_nats(self) -> None:
        self.nc = await nats.connect(self.nats.url, name="jinshui-bench", pending_size=64 * 1024 * 1024)
        self.js = self.nc.jetstream(timeout=10)

    async def start_stack(self, *, timeout: float = 90) -> None:
        """A fresh database and the four services as processes, JINSHUI_ENV=development as `jinshui up` runs."""
        assert self.root is not None and self.pg is not None and self.nats is not None
        self.database_url = await ensure_database(self.pg.url, DATABASE)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = dict(os.environ)
        for var in ("JINSHUI_STREAM_PREFIX", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            env.pop(var, None)
        env.update(
            JINSHUI_ENV="development",
            JINSHUI_HOME=str(home),
            NATS_URL=self.nats.url,
            DATABASE_URL=self.database_url,
            JINSHUI_CLOCK="adjustable",
            JINSHUI_CLOCK_FILE=str(home / "clock"),
        )
        env.setdefault("LOG_LEVEL", "INFO")
        self.stack = Stack(env=env, log_dir=self.root / "logs")
        await self.stack.start(timeout)
        self.lean = LeanHttp(self.stack.url("gateway"))
        self.http = httpx.AsyncClient(
            base_url=self.stack.url("gateway"),
            timeout=30,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )

    @property
    def home(self) -> Path:
        assert self.root is not None
        return self.root / "home"

    def token(self, role: str, sub: str | None = None) -> str:
        return issue_token(home=self.home, role=role, sub=sub)

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    def service_pids(self) -> dict[str, int]:
        assert self.stack is not None
        return {name: self.stack.pid(name) for name in SERVICES}

    def check_services(self) -> None:
        """Raise when a service has exited (a scenario must not measure a dead stack)."""
        if self.stack is not None and (dead := self.stack.exited()):
            name = next(iter(dead))
            raise RuntimeError(f"{name} exited with code {dead[name]}:\n{self.stack.log_tail(name, 40)}")

    async def close(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.aclose()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        if self.stack is not None:
            await self.stack.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.pg is not None:
            self.pg.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tails(self, lines: int = 30) -> str:
        if self.stack is None:
            return ""
        return "\n".join(f"--- {n} log ---\n{self.stack.log_tail(n, lines)}" for n in self.stack.services)

    # --- households -------------------------------------------------------------------------------
    async def register_households(self, *, beats: int, regular: int, urgent: int, concurrency: int = 32) -> None:
        """Register households through the gateway (`POST /v1/households`), spread evenly over `beats` beats.

        Each beat's community admin registers its own households (the gateway may limit each caller's rate).
        """
        assert self.http is not None
        admins = [self.auth("community_admin", f"bench-admin-{b:02d}") for b in range(beats)]
        layout = [Beat(f"BEAT{b:02d}", [f"G{b:02d}{g}" for g in range(4)]) for b in range(beats)]
        todo: list[tuple[str, int, int]] = []
        for i in range(regular):
            todo.append((f"B{i % beats:02d}H{i:06d}", i % beats, i))
        for i in range(urgent):
            todo.append((f"B{i % beats:02d}U{i:06d}", i % beats, i))
        sem = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        # The beats and their grids first, as a community admin sets them up (desk officers are assigned to them).
        for b, beat in enumerate(layout):
            areas = [("/v1/beats", {"code": beat.name, "name": f"警格{b:02d}"})]
            areas += [("/v1/grids", {"code": g, "name": f"网格{g}", "beat": beat.name}) for g in beat.grids]
            for path, body in areas:
                r = await self.http.post(path, json=body, headers=admins[b])
                if r.status_code not in (201, 409):
                    raise RuntimeError(f"setting up {body['code']}: HTTP {r.status_code} {r.text[:300]}")

        async def one(code: str, b: int, i: int) -> None:
            beat = layout[b]
            body = {
                "code": code,
                "address": f"金水小区{code[3]}区{i // 100 + 1}栋{i % 100:02d}室",
                "grid": beat.grids[i % len(beat.grids)],
                "beat": beat.name,
            }
            async with sem:
                for attempt in range(20):
                    r = await self.http.post("/v1/households", json=body, headers=admins[b])
                    if r.status_code in (201, 409):
                        return
                    if r.status_code not in (429, 503) or attempt == 19:
                        raise RuntimeError(f"registering {code}: HTTP {r.status_code} {r.text[:300]}")
                    await asyncio.sleep(min(float(r.headers.get("retry-after") or 0.2), 2.0))

        await asyncio.gather(*(one(*t) for t in todo))
        self.households = Households(
            regular=[t[0] for t in todo[:regular]],
            urgent=[t[0] for t in todo[regular:]],
            beats=beats,
            seconds=time.perf_counter() - started,
        )

    # --- progress as NATS sees it -----------------------------------------------------------------
    async def find_consumer(self, stream: str, *, takes: str, durable_prefix: str) -> str:
        """The durable consumer on `stream` named `durable_prefix…` whose filter takes the subject `takes`."""
        for info in await self.js.consumers_info(stream):
            c = info.config
            filters = [f for f in [*(c.filter_subjects or []), c.filter_subject] if f] or [">"]
            if (c.durable_name or "").startswith(durable_prefix) and any(subject_matches(f, takes) for f in filters):
                return c.durable_name
        raise RuntimeError(f"no consumer {durable_prefix}… on {stream} takes {takes}")

    async def consumer_state(self, stream: str, durable: str) -> dict[str, int]:
        """Deliveries acknowledged, the stream sequence acknowledged up to, pending, unacknowledged, redelivered."""
        info = await self.js.consumer_info(stream, durable)
        return {
            "acked": info.ack_floor.consumer_seq or 0,
            "acked_seq": info.ack_floor.stream_seq or 0,
            "pending": info.num_pending or 0,
            "unacked": info.num_ack_pending or 0,
            "redelivered": info.num_redelivered or 0,
        }

    async def last_seq(self, stream: str) -> int:
        return (await self.js.stream_info(stream)).state.last_seq or 0

    async def subject_count(self, stream: str, subjects: str) -> int:
        """How many messages on `stream` match `subjects`."""
        info = await self.js.stream_info(stream, subjects_filter=subjects)
        return sum((info.state.subjects or {}).values())

    async def pipeline_metrics(self) -> dict[str, float]:
        """The kit's consumer and outbox counters of every service, from /metrics: `metric{labels}` -> value."""
        assert self.stack is not None
        out: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=5) as client:
            for name in self.stack.services:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await client.get(f"{self.stack.url(name)}/metrics")).text
                    for line in text.splitlines():
                        if line.startswith(PIPELINE_METRICS):
                            key, _, value = line.rpartition(" ")
                            out[key] = out.get(key, 0.0) + float(value)
        return out

    async def outbox_backlogs(self) -> dict[str, int]:
        """Each service's unpublished outbox rows, from its /metrics (which counts them when scraped)."""
        assert self.stack is not None
        backlogs: dict[str, int] = {}
        async with httpx.AsyncClient(timeout=5) as client:
            for name in ("registry", "incidents", "risk"):
                r = await client.get(f"{self.stack.url(name)}/metrics")
                for line in r.text.splitlines():
                    if line.startswith("jinshui_outbox_backlog{"):
                        backlogs[name] = int(float(line.rsplit(" ", 1)[1]))
        return backlogs

    async def wait_quiet(self, *, timeout: float = 120) -> float:
        """Wait until every durable consumer has caught up and every outbox is published; the seconds it took."""
        started = time.monotonic()
        calm = 0
        while True:
            self.check_services()
            busy = []
            for stream in await natsconn.all_streams(self.js):
                for info in await self.js.consumers_info(stream.config.name):
                    if info.config.durable_name and (info.num_pending or info.num_ack_pending):
                        busy.append(f"{info.name}: {info.num_pending} pending, {info.num_ack_pending} unacked")
            busy += [f"{n} outbox: {b}" for n, b in (await self.outbox_backlogs()).items() if b]
            calm = 0 if busy else calm + 1
            if calm >= 2:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the stack did not go quiet within {timeout:.0f} s: {'; '.join(busy)}")
            await asyncio.sleep(0.2)
