"""The fault suite's harness: its own servers (so they can be killed), a mixed load through the gateway, an SSE
observer, and a checker in the spirit of Jepsen's queue checker: every accepted record's effect exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from jinshui.cli import natsauth
from jinshui.cli.embedded import NatsServer, PgServer, ensure_database, start_nats, start_postgres
from jinshui.cli.stack import SERVICES, Stack
from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

# make test runs a small size; make faults sets FAULTS_SIZE=20000 (records of mixed load per scenario).
SIZE = int(os.environ.get("FAULTS_SIZE", "600"))
BATCH = int(os.environ.get("FAULTS_BATCH", "50"))
URGENT_EVERY = 10  # one visit in ten raises an alert
MATCH_EVERY = 25  # one sighting in twenty-five is of a watch-listed plate


@dataclass
class Report:
    accepted: int = 0
    applied: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    alerts_expected: int = 0
    alerts_seen: int = 0
    refused_503: int = 0
    recovery_seconds: float = 0.0

    def line(self, name: str) -> str:
        return (
            f"{name}: accepted={self.accepted} applied={self.applied} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} alerts={self.alerts_seen}/{self.alerts_expected} "
            f"503s={self.refused_503} recovery={self.recovery_seconds:.1f}s"
        )


class Platform:
    """Own NATS and PostgreSQL and the four services, on this machine only."""

    def __init__(self, root: Path, *, nats_extra: str = "") -> None:
        self.root, self.nats_extra = root, nats_extra
        self.nats: NatsServer | None = None
        self.pg: PgServer | None = None
        self.stack: Stack | None = None
        self.home = root / "home"
        self.http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Platform:
        # With the services' users and permissions, as every deployment runs them.
        passwords = {user: f"{user}-faults" for user in (*SERVICES, natsauth.ADMIN_USER)}
        authorization = natsauth.render(passwords, admin_password=passwords[natsauth.ADMIN_USER])
        self.nats = start_nats(self.root / "nats", config_extra=self.nats_extra + "\n" + authorization)
        self.pg = start_postgres(self.root / "pg")
        db = await ensure_database(self.pg.url, "jinshui")
        env = dict(os.environ)
        env.update(
            NATS_URL=self.nats.url,
            DATABASE_URL=db,
            JINSHUI_HOME=str(self.home),
            JINSHUI_ENV="test",
            LOG_LEVEL="WARNING",
            ESCALATE_AFTER_SECONDS="86400",
        )
        self.stack = Stack(env=env, log_dir=self.root / "logs", nats_users=natsauth.service_users(passwords))
        await self.stack.start(timeout=90)
        self.http = httpx.AsyncClient(base_url=self.stack.url("gateway"), timeout=30)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.stack is not None:
            await self.stack.stop()
        for server in (self.nats, self.pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    async def ready(self, timeout: float = 90) -> float:
        """Seconds until every service answers /readyz with 200 again."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() - started < timeout:
                codes = []
                for name in ("registry", "incidents", "risk", "gateway"):
                    try:
                        codes.append((await c.get(self.stack.url(name) + "/readyz")).status_code)
                    except httpx.HTTPError:
                        codes.append(0)
                if all(x == 200 for x in codes):
                    return time.monotonic() - started
                await asyncio.sleep(0.2)
        raise AssertionError(f"not ready after {timeout}s")


class Observer:
    """A desk client that never stops: reconnects with Last-Event-ID and records every alert event it sees."""

    def __init__(self, platform: Platform) -> None:
        self.p = platform
        self.seen: list[tuple[int, str, str, str]] = []  # (seq, type, alert id, subject)
        self.last_id: str | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        import orjson

        while True:
            headers = {**self.p.auth("police", "desk-1"), "Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with (
                    httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as c,
                    c.stream("GET", self.p.stack.url("gateway") + "/v1/alerts/stream", headers=headers) as r,
                ):
                    ev: dict[str, str] = {}
                    async for line in r.aiter_lines():
                        if line == "":
                            if ev.get("event") == "alert":
                                data = orjson.loads(ev["data"])
                                d = data["data"]
                                subject = d.get("household_code") or d.get("explanation", "")
                                self.seen.append((int(ev["id"]), data["type"], d["alert_id"], subject))
                                self.last_id = ev["id"]
                            ev = {}
                        elif not line.startswith(":"):
                            k, _, v = line.partition(":")
                            ev[k] = v[1:] if v.startswith(" ") else v
            except (httpx.HTTPError, OSError):
                pass
            await asyncio.sleep(0.2)

    def raised(self) -> list[tuple[int, str, str, str]]:
        return [x for x in self.seen if x[1] == "org.jinshui.risk.alert.raised.v1"]


class Load:
    """A mixed load of visits and gate sightings, retried with the same Idempotency-Key until accepted."""

    def __init__(self, platform: Platform, *, size: int = SIZE, batch: int = BATCH) -> None:
        self.p, self.size, self.batch = platform, size, batch
        self.households = [f"F{i:06d}" for i in range(size // 2 // URGENT_EVERY + 1)]
        self.plates = [f"鲁F{i:05d}" for i in range(size // 2 // MATCH_EVERY + 1)]
        self.accepted: dict[str, tuple[str, int]] = {}  # submission id -> (kind, records)
        self.expected_alert_subjects: set[str] = set()
        self.refused_503 = 0

    async def prepare(self) -> None:
        admin, police = self.p.auth("community_admin"), self.p.auth("police")
        sem = asyncio.Semaphore(16)

        async def household(code: str) -> None:
            async with sem:
                body = {"code": code, "address": f"金水小区{code}", "grid": "G01", "beat": "B1"}
                r = await self.p.http.post("/v1/households", json=body, headers=admin)
                assert r.status_code in (201, 409), r.text

        async def watch(plate: str) -> None:
            async with sem:
                body = {"kind": "plate", "plate": plate, "level": "MEDIUM", "reason": "fault suite"}
                r = await self.p.http.post("/v1/watchlists", json=body, headers=police)
                assert r.status_code == 201, r.text

        r = await self.p.http.post(
            "/v1/gates", json={"code": "N1", "name": "北门", "grid": "G01", "beat": "B1"}, headers=police
        )
        assert r.status_code in (201, 409), r.text
        await asyncio.gather(*(household(c) for c in self.households), *(watch(p) for p in self.plates))

    def _batches(self):
        urgent = iter(self.households)
        matching = iter(self.plates)
        n, i = 0, 0
        while n < self.size:
            now = datetime.now(UTC).isoformat()
            count = min(self.batch, self.size - n)
            if i % 2 == 0:
                visits = []
                for j in range(count):
                    code = next(urgent, None) if (n + j) % URGENT_EVERY == 0 else None
                    if code is not None:
                        self.expected_alert_subjects.add(code)
                        visits.append({"household_code": code, "visited_at": now, "concerns": ["urgent"]})
                    else:
                        visits.append({"household_code": self.households[0], "visited_at": now})
                yield "visits", "/v1/visits", {"visits": visits}, self.p.auth("grid_platform", "platform-1")
            else:
                sightings = []
                for j in range(count):
                    plate = next(matching, None) if (n + j) % MATCH_EVERY == 0 else None
                    if plate is not None:
                        self.expected_alert_subjects.add(plate)
                    sightings.append(
                        {"gate": "N1", "seen_at": now, "plate": plate or f"鲁X{random.randrange(10**5):05d}"}
                    )
                yield "sightings", "/v1/sightings", {"sightings": sightings}, self.p.auth("gate_system", "gate-1")
            n += count
            i += 1

    async def run(self, *, concurrency: int = 4, on_progress=None) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for item in self._batches():
            queue.put_nowait(item)
        total = queue.qsize()
        done = 0

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                kind, path, body, headers = queue.get_nowait()
                key = str(uuid.uuid4())
                sid = await self._post_until_accepted(path, body, {**headers, "Idempotency-Key": key})
                records = len(next(iter(body.values())))
                self.accepted[sid] = (kind, records)
                done += 1
                if on_progress is not None:
                    await on_progress(done, total)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def _post_until_accepted(self, path: str, body: dict, headers: dict) -> str:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                r = await self.p.http.post(path, json=body, headers=headers)
            except (httpx.HTTPError, OSError):
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 202 or (r.status_code == 200 and "submission_id" in r.text):
                return r.json()["submission_id"]
            if r.status_code in (409, 429, 503, 502, 504):
                self.refused_503 += r.status_code == 503
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"{path} answered {r.status_code}: {r.text[:300]}")
        raise AssertionError(f"{path} never accepted")


async def check(platform: Platform, load: Load, observer: Observer, *, timeout: float = 180) -> Report:
    """Wait until every accepted submission is settled and every expected alert seen, then count."""
    report = Report(accepted=sum(n for _, n in load.accepted.values()), refused_503=load.refused_503)
    pending = dict(load.accepted)
    deadline = time.monotonic() + timeout
    headers = {
        "visits": platform.auth("grid_platform", "platform-1"),
        "sightings": platform.auth("gate_system", "gate-1"),
    }
    while pending and time.monotonic() < deadline:
        for sid, (kind, _n) in list(pending.items()):
            try:
                r = await platform.http.get(f"/v1/submissions/{sid}", headers=headers[kind])
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and r.json()["status"] != "received":
                report.applied += r.json()["applied"]
                pending.pop(sid)
        if pending:
            await asyncio.sleep(0.5)
    report.lost += [f"submission {sid} never settled" for sid in pending]
    report.alerts_expected = len(load.expected_alert_subjects)

    def subjects() -> Counter:
        out: Counter = Counter()
        for _, _, _, subject in observer.raised():
            key = subject if subject in load.expected_alert_subjects else _plate_in(subject, load.plates)
            out[key] += 1
        return out

    with contextlib.suppress(AssertionError):
        await eventually(
            lambda: len(set(subjects()) & load.expected_alert_subjects) >= report.alerts_expected,
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.5,
            what="every expected alert",
        )
    seen = subjects()
    report.alerts_seen = len(set(seen) & load.expected_alert_subjects)
    report.lost += [f"no alert for {s}" for s in sorted(load.expected_alert_subjects - set(seen))]
    report.duplicated += [f"{s} alerted {n} times" for s, n in seen.items() if n > 1]
    seqs = [x[0] for x in observer.seen]
    report.duplicated += [f"feed sequence {s} delivered twice" for s, n in Counter(seqs).items() if n > 1]
    return report


def _plate_in(text: str, plates: list[str]) -> str:
    for plate in plates:
        if plate in text:
            return plate
    return text
