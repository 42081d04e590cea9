"""The fault suite's harness: its own servers (so they can be killed), a mixed load through the gateway, an SSE
observer, and a checker in the spirit of Jepsen's queue checker: every accepted record's effect exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import nats

from jinshui.cli import natsauth
from jinshui.cli._proc import pick_port
from jinshui.cli.embedded import NatsServer, PgServer, ensure_database, start_nats, start_postgres
from jinshui.cli.stack import SERVICES, Stack
from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

# make test runs a small size; make faults sets FAULTS_SIZE=20000 (records of mixed load per scenario).
SIZE = int(os.environ.get("FAULTS_SIZE", "600"))
BATCH = int(os.environ.get("FAULTS_BATCH", "50"))
URGENT_EVERY = 10  # one visit in ten raises an alert
MATCH_EVERY = 100  # one sighting in a hundred is of a watch-listed plate

# The mixed load, in turn: what is submitted, where, and by whom (role, subject).
KINDS = ("visits", "police_calls", "reports", "sightings")
PATHS = {
    "visits": "/v1/visits",
    "police_calls": "/v1/police-calls",
    "reports": "/v1/reports",
    "sightings": "/v1/sightings",
}
BODY_KEYS = {"visits": "visits", "police_calls": "calls", "reports": "reports", "sightings": "sightings"}
# What the checker counts in the owners' tables: a visit row, an incident source, a watch-list hit.
EFFECTS = ("visits", "police_calls", "reports", "watch_hits")
SUBMITTERS = {
    "visits": ("grid_platform", "platform-1"),
    "police_calls": ("police_platform", "police-platform-1"),
    "reports": ("grid_platform", "platform-1"),
    "sightings": ("gate_system", "gate-1"),
}


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
    longest_wait: float = 0.0
    by_kind: Counter = field(default_factory=Counter)  # accepted records per kind
    effects: Counter = field(default_factory=Counter)  # effects found (at most the expected number), per kind
    effects_expected: Counter = field(default_factory=Counter)

    def tally(self, kind: str, what: str, *, expected: dict[str, int], found: dict[str, int]) -> None:
        """Count one kind's effects: `expected` and `found` map each record's key to how many effects it has."""
        for key, want in expected.items():
            got = found.get(key, 0)
            self.effects_expected[kind] += want
            self.effects[kind] += min(got, want)
            if got < want:
                self.lost.append(f"{what} {key}: {got} of {want}")
            elif got > want:
                self.duplicated.append(f"{what} {key}: {got} for {want}")
        self.duplicated += [f"{what} {key}: {n} unexpected" for key, n in found.items() if key not in expected]

    def line(self, name: str) -> str:
        mix = " ".join(f"{k}={self.by_kind[k]}" for k in KINDS)
        effects = " ".join(f"{k}={self.effects[k]}/{self.effects_expected[k]}" for k in EFFECTS)
        return (
            f"{name}: accepted={self.accepted} applied={self.applied} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} alerts={self.alerts_seen}/{self.alerts_expected} "
            f"503s={self.refused_503} recovery={self.recovery_seconds:.1f}s longest_wait={self.longest_wait:.1f}s "
            f"mix[{mix}] effects[{effects}]"
        )


def start_nats_cluster(root: Path, *, size: int, config_extra: str = "", timeout: float = 30) -> list[NatsServer]:
    """`size` nats-servers on loopback joined by cluster routes (JetStream clustered), each with its own ports and
    store; returns once the JetStream meta group has a leader and every peer."""
    used: set[int] = set()

    def port() -> int:
        chosen = pick_port(None, avoid=used)
        used.add(chosen)
        return chosen

    ports = [(port(), port(), port()) for _ in range(size)]
    routes = ", ".join(f'"nats-route://127.0.0.1:{route}"' for _, _, route in ports)
    servers: list[NatsServer] = []
    try:
        for i, (client, monitor, route) in enumerate(ports, 1):
            cluster = "\n".join(
                [
                    f'server_name: "n{i}"',
                    "cluster {",
                    '  name: "faults"',
                    f'  listen: "127.0.0.1:{route}"',
                    f"  routes: [{routes}]",
                    "}",
                ]
            )
            server = NatsServer(
                root / f"n{i}", port=client, monitor_port=monitor, config_extra=cluster + "\n" + config_extra
            )
            server.start()
            servers.append(server)
        deadline = time.monotonic() + timeout
        while True:
            meta = _monitor(servers[0], "/jsz").get("meta_cluster", {})
            if meta.get("leader") and meta.get("cluster_size") == size:
                return servers
            if time.monotonic() > deadline:
                raise AssertionError(f"no JetStream meta leader over {size} servers after {timeout}s: {meta}")
            time.sleep(0.1)
    except BaseException:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        raise


def _monitor(server: NatsServer, path: str) -> dict:
    try:
        with urllib.request.urlopen(server.monitor_url + path, timeout=2) as resp:
            return json.load(resp)
    except OSError:
        return {}


class Platform:
    """Own NATS (one server, or a cluster of `nats_cluster` servers with R3 streams), PostgreSQL and the four
    services, on this machine only."""

    def __init__(self, root: Path, *, nats_extra: str = "", nats_cluster: int = 1) -> None:
        self.root, self.nats_extra, self.nats_cluster = root, nats_extra, nats_cluster
        self.nats: NatsServer | None = None
        self.nats_servers: list[NatsServer] = []
        self.pg: PgServer | None = None
        self.db: str | None = None
        self.stack: Stack | None = None
        self.home = root / "home"
        self.http: httpx.AsyncClient | None = None
        self.passwords = {user: f"{user}-faults" for user in (*SERVICES, natsauth.ADMIN_USER)}

    async def __aenter__(self) -> Platform:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        # With the services' users and permissions, as every deployment runs them.
        authorization = natsauth.render(self.passwords, admin_password=self.passwords[natsauth.ADMIN_USER])
        extra = self.nats_extra + "\n" + authorization
        if self.nats_cluster > 1:
            self.nats_servers = start_nats_cluster(self.root / "nats", size=self.nats_cluster, config_extra=extra)
        else:
            self.nats_servers = [start_nats(self.root / "nats", config_extra=extra)]
        self.nats = self.nats_servers[0]
        self.pg = start_postgres(self.root / "pg")
        self.db = await ensure_database(self.pg.url, "jinshui")
        env = dict(os.environ)
        env.update(
            NATS_URL=",".join(s.url for s in self.nats_servers),
            JINSHUI_STREAM_REPLICAS=str(len(self.nats_servers)),
            DATABASE_URL=self.db,
            JINSHUI_HOME=str(self.home),
            JINSHUI_ENV="test",
            LOG_LEVEL="WARNING",
            ESCALATE_AFTER_SECONDS="86400",
        )
        self.stack = Stack(env=env, log_dir=self.root / "logs", nats_users=natsauth.service_users(self.passwords))
        await self.stack.start(timeout=90)
        self.http = httpx.AsyncClient(base_url=self.stack.url("gateway"), timeout=30)

    async def __aexit__(self, *exc) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.stack is not None:
            await self.stack.stop()
        for server in (*self.nats_servers, self.pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    async def admin_nats(self):
        """A NATS connection as the admin user, to every server of the platform."""
        return await nats.connect(
            servers=[s.url for s in self.nats_servers],
            user=natsauth.ADMIN_USER,
            password=self.passwords[natsauth.ADMIN_USER],
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
        )

    def nats_server(self, name: str) -> NatsServer:
        """The cluster's server of that server_name (n1, n2, ...)."""
        return self.nats_servers[int(name.removeprefix("n")) - 1]

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


@dataclass
class Accepted:
    kind: str
    records: int
    keys: list[str]  # the records' own ids where they have one (call ids, report ids)


class Load:
    """A mixed load of visits, police calls, grid reports and gate sightings, in turn, each batch retried with
    the same Idempotency-Key until accepted."""

    def __init__(self, platform: Platform, *, size: int = SIZE, batch: int = BATCH) -> None:
        self.p, self.size, self.batch = platform, size, batch
        self.run_id = uuid.uuid4().hex[:8]
        per_kind = size // len(KINDS) + batch
        self.households = [f"F{i:06d}" for i in range(per_kind // URGENT_EVERY + 1)]
        self.plates = [f"鲁F{i:05d}" for i in range(per_kind // MATCH_EVERY + 1)]
        self.watch_entries: dict[str, str] = {}  # plate -> watch-list entry id
        self.accepted: dict[str, Accepted] = {}  # submission id -> what it carried
        self.expected_alert_subjects: set[str] = set()
        self.matched_plates: set[str] = set()
        self.refused_503 = 0
        self.probes = 0
        self.longest_wait = 0.0  # seconds from a batch's first attempt to its acceptance, the worst of the run
        self.headers = {kind: platform.auth(*SUBMITTERS[kind]) for kind in KINDS}

    @property
    def accepted_records(self) -> int:
        return sum(a.records for a in self.accepted.values())

    async def prepare(self) -> None:
        admin, police = self.p.auth("community_admin"), self.p.auth("police")
        sem = asyncio.Semaphore(16)

        async def household(code: str) -> None:
            async with sem:
                body = {"code": code, "address": f"金水小区{code}", "grid": "G01", "beat": "B1"}
                r = await self._set_up("/v1/households", body, admin)
                assert r.status_code in (201, 409), r.text

        async def watch(plate: str) -> None:
            async with sem:
                body = {"kind": "plate", "plate": plate, "level": "MEDIUM", "reason": "fault suite"}
                r = await self._set_up("/v1/watchlists", body, police)
                assert r.status_code == 201, r.text
                self.watch_entries[plate] = r.json()["id"]

        r = await self.p.http.post(
            "/v1/gates", json={"code": "N1", "name": "北门", "grid": "G01", "beat": "B1"}, headers=police
        )
        assert r.status_code in (201, 409), r.text
        await asyncio.gather(*(household(c) for c in self.households), *(watch(p) for p in self.plates))

    async def _set_up(self, path: str, body: dict, headers: dict) -> httpx.Response:
        """A set-up call, waiting out the gateway's rate limit per role (a full-size run has hundreds)."""
        while True:
            r = await self.p.http.post(path, json=body, headers=headers)
            if r.status_code != 429:
                return r
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    def _batches(self):
        urgent, matching = iter(self.households), iter(self.plates)
        done: Counter = Counter()  # records so far, per kind
        n, i = 0, 0
        while n < self.size:
            kind = KINDS[i % len(KINDS)]
            now = datetime.now(UTC).isoformat()
            records, keys = [], []
            for _ in range(min(self.batch, self.size - n)):
                k = done[kind]
                done[kind] += 1
                if kind == "visits":
                    code = next(urgent, None) if k % URGENT_EVERY == 0 else None
                    if code is not None:
                        self.expected_alert_subjects.add(code)
                        records.append({"household_code": code, "visited_at": now, "concerns": ["urgent"]})
                    else:
                        records.append({"household_code": self.households[0], "visited_at": now})
                elif kind == "police_calls":
                    # An address of its own, which no household has: one incident per call, no correlation.
                    keys.append(f"{self.run_id}-C{k:06d}")
                    records.append(
                        {
                            "call_id": keys[-1],
                            "received_at": now,
                            "category": "noise",
                            "address": f"故障测试路{k}号",
                            "description": "fault suite",
                        }
                    )
                elif kind == "reports":
                    keys.append(f"{self.run_id}-R{k:06d}")
                    records.append(
                        {
                            "report_id": keys[-1],
                            "kind": "lead",
                            "reported_at": now,
                            "address": f"故障测试街{k}号",
                            "description": "fault suite",
                        }
                    )
                else:
                    plate = next(matching, None) if k % MATCH_EVERY == 0 else None
                    if plate is not None:
                        self.expected_alert_subjects.add(plate)
                        self.matched_plates.add(plate)
                    records.append(
                        {"gate": "N1", "seen_at": now, "plate": plate or f"鲁X{random.randrange(10**5):05d}"}
                    )
            yield kind, {BODY_KEYS[kind]: records}, keys
            n += len(records)
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
                kind, body, keys = queue.get_nowait()
                headers = {**self.headers[kind], "Idempotency-Key": str(uuid.uuid4())}
                sid = await self._post_until_accepted(PATHS[kind], body, headers)
                self.accepted[sid] = Accepted(kind, len(body[BODY_KEYS[kind]]), keys)
                done += 1
                if on_progress is not None:
                    await on_progress(done, total)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def _post_until_accepted(self, path: str, body: dict, headers: dict) -> str:
        first = time.monotonic()
        deadline = first + 180
        while time.monotonic() < deadline:
            try:
                r = await self.p.http.post(path, json=body, headers=headers)
            except (httpx.HTTPError, OSError):
                await asyncio.sleep(0.2)
                continue
            if r.status_code == 202 or (r.status_code == 200 and "submission_id" in r.text):
                self.longest_wait = max(self.longest_wait, time.monotonic() - first)
                return r.json()["submission_id"]
            if r.status_code in (409, 429, 503, 502, 504):
                self.refused_503 += r.status_code == 503
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"{path} answered {r.status_code}: {r.text[:300]}")
        raise AssertionError(f"{path} never accepted")

    async def probe(self) -> float:
        """Submit one police call of its own, retried until accepted (it joins the load and the checker);
        returns the monotonic time it was accepted."""
        self.probes += 1
        key = f"{self.run_id}-P{self.probes:03d}"
        now = datetime.now(UTC).isoformat()
        call = {"call_id": key, "received_at": now, "category": "noise", "address": f"故障测试巷{self.probes}号"}
        headers = {**self.headers["police_calls"], "Idempotency-Key": str(uuid.uuid4())}
        sid = await self._post_until_accepted(PATHS["police_calls"], {"calls": [call]}, headers)
        self.accepted[sid] = Accepted("police_calls", 1, [key])
        return time.monotonic()


async def check(platform: Platform, load: Load, observer: Observer, *, timeout: float = 180) -> Report:
    """Wait until every accepted submission is settled and every expected alert seen, then count each accepted
    record's effect in the owning service's tables: exactly once."""
    report = Report(accepted=load.accepted_records, refused_503=load.refused_503, longest_wait=load.longest_wait)
    for a in load.accepted.values():
        report.by_kind[a.kind] += a.records
    pending = dict(load.accepted)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for sid, a in list(pending.items()):
            try:
                r = await platform.http.get(f"/v1/submissions/{sid}", headers=load.headers[a.kind])
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and r.json()["status"] != "received":
                report.applied += r.json()["applied"]
                pending.pop(sid)
        if pending:
            await asyncio.sleep(0.5)
    report.lost += [f"submission {sid} never settled" for sid in pending]
    await _count_effects(platform, load, report)
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


async def _count_effects(platform: Platform, load: Load, report: Report) -> None:
    """Visits rows in registry, one source per police call and report in incidents, one watch-list hit per
    matching sighting in risk: each expected exactly once (settled means committed with its effects)."""
    by_kind: dict[str, list[Accepted]] = {kind: [] for kind in KINDS}
    sids: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for sid, a in load.accepted.items():
        by_kind[a.kind].append(a)
        sids[a.kind].append(sid)

    def tally(kind: str, what: str, expected: dict[str, int], found: dict[str, int]) -> None:
        report.tally(kind, what, expected=expected, found=found)

    conn = await asyncpg.connect(platform.db)
    try:
        rows = await conn.fetch(
            "SELECT submission_id, count(*) AS n FROM registry.visits WHERE submission_id = ANY($1::text[]) GROUP BY 1",
            sids["visits"],
        )
        expected = {sid: load.accepted[sid].records for sid in sids["visits"]}
        tally("visits", "visits of submission", expected, {r["submission_id"]: r["n"] for r in rows})
        for kind, origin in (("police_calls", "police_call"), ("reports", "report")):
            keys = [k for a in by_kind[kind] for k in a.keys]
            rows = await conn.fetch(
                """SELECT external_id, count(*) AS n FROM incidents.sources
                   WHERE origin = $1 AND external_id = ANY($2::text[]) GROUP BY 1""",
                origin,
                keys,
            )
            tally(kind, f"sources of {origin}", dict.fromkeys(keys, 1), {r["external_id"]: r["n"] for r in rows})
        rows = await conn.fetch(
            "SELECT entry_id, count(*) AS n FROM risk.watch_hits WHERE entry_id = ANY($1::text[]) GROUP BY 1",
            list(load.watch_entries.values()),
        )
        # Only the matching sightings of accepted batches are expected (a batch is accepted whole or not at all).
        matched = {load.watch_entries[p]: 1 for p in load.matched_plates}
        tally("watch_hits", "watch-list hits of entry", matched, {r["entry_id"]: r["n"] for r in rows})
    finally:
        await conn.close()


def _plate_in(text: str, plates: list[str]) -> str:
    for plate in plates:
        if plate in text:
            return plate
    return text
