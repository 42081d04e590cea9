"""The scenarios: intake, sightings and visits end to end, alert latency to the desk, import at scale, footprint."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.environment import BenchEnv, pipeline_delta
from bench.http import LeanHttpError
from bench.monitor import Watch
from bench.profile import Profiler
from bench.sse import DeskClient

BATCH = 500
VISIT_RECORDED = "registry.visit.recorded"  # one visit per event (VISIT_RECORDED_VERSIONS=1 or 2)
VISITS_RECORDED = "registry.visits.recorded"  # the visits of a submission in one beat (the default)
SETTLED = "registry.submission.settled"
ALERT_RAISED = "risk.alert.raised"
NOTE = "入户走访：家中情况正常，已核对常住人口。"
OTHER_CONCERNS = ("dispute", "hazard", "welfare_need")
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Size:
    """How big a run is; `full` fits in 10 minutes on a 2-core machine, `smoke` in well under one."""

    name: str
    floor_seconds: float
    floor_samples: int
    beats: int
    households: int
    visits_warmup: float
    visits_steady: float
    visits_clients: int
    visits_window: int
    latency_warmup: float
    latency_steady: float
    latency_rate: float
    latency_batch: int
    latency_urgent_share: float
    latency_grid_workers: int
    desk_clients: int
    latency_drain_timeout: float
    intake_warmup: float
    intake_steady: float
    intake_clients: int
    drain_timeout: float
    sightings_total: int = 200_000
    sightings_warmup_total: int = 20_000
    sightings_clients: int = 8
    sightings_match_share: float = 0.01
    import_rows: int = 200_000
    import_cards: int = 2_000

    @property
    def urgent_households(self) -> int:
        """Enough households for each urgent visit of the latency scenario to have its own."""
        expected = self.latency_rate * self.latency_urgent_share * (self.latency_warmup + self.latency_steady)
        return math.ceil(expected * 1.25) + self.beats


FULL = Size(
    name="full",
    floor_seconds=3.0,
    floor_samples=300,
    beats=10,
    households=2000,
    visits_warmup=5.0,
    visits_steady=30.0,
    visits_clients=8,
    visits_window=20_000,
    latency_warmup=10.0,
    latency_steady=60.0,
    latency_rate=1000.0,
    latency_batch=10,
    latency_urgent_share=0.01,
    latency_grid_workers=50,
    desk_clients=500,
    latency_drain_timeout=30.0,
    intake_warmup=5.0,
    intake_steady=30.0,
    intake_clients=16,
    drain_timeout=120.0,
)
SMOKE = Size(
    name="smoke",
    floor_seconds=0.3,
    floor_samples=30,
    beats=10,
    households=200,
    visits_warmup=1.0,
    visits_steady=3.0,
    visits_clients=4,
    visits_window=4_000,
    latency_warmup=1.0,
    latency_steady=3.0,
    latency_rate=200.0,
    latency_batch=10,
    latency_urgent_share=0.02,
    latency_grid_workers=10,
    desk_clients=20,
    latency_drain_timeout=20.0,
    intake_warmup=1.0,
    intake_steady=3.0,
    intake_clients=4,
    drain_timeout=60.0,
    sightings_total=5_000,
    sightings_warmup_total=1_000,
    sightings_clients=2,
    import_rows=3_000,
    import_cards=100,
)
SIZES = {s.name: s for s in (FULL, SMOKE)}


# --- what is posted -----------------------------------------------------------------------------
def _record(code: str, visited_at: str, concerns: list[str]) -> dict:
    return {
        "household_code": code,
        "visited_at": visited_at,
        "concerns": concerns,
        "people_present": 2,
        "follow_up_requested": bool(concerns),
        "note": NOTE,
    }


def build_bodies(
    households: list[str], *, count: int, urgent_every: int, seed: int = 8
) -> list[tuple[bytes, list[str]]]:
    """`count` distinct request bodies of 500 visits each, and the households of their urgent visits.

    Every `urgent_every`-th visit is urgent; one in twenty carries another concern; the rest none.
    """
    rng = random.Random(seed)
    visited_at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    bodies, k = [], 0
    for _ in range(count):
        records, urgent = [], []
        for _ in range(BATCH):
            household = rng.choice(households)
            if k % urgent_every == 0:
                concerns = ["urgent"]
                urgent.append(household)
            elif k % 20 == 1:
                concerns = [rng.choice(OTHER_CONCERNS)]
            else:
                concerns = []
            records.append(_record(household, visited_at, concerns))
            k += 1
        bodies.append((orjson.dumps({"visits": records}), urgent))
    return bodies


def keyed(headers: dict[str, str]) -> dict[str, str]:
    """The headers with a fresh Idempotency-Key: clients send one with every submission (integrations must)."""
    return headers | {"Idempotency-Key": uuid.uuid4().hex}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def _grid_platform_headers(env: BenchEnv, n: int) -> list[dict[str, str]]:
    return [env.auth("grid_platform", f"grid-platform-{i}") | JSON for i in range(n)]


# --- 1. intake ------------------------------------------------------------------------------------
async def intake(env: BenchEnv, watch: Watch, size: Size, *, profiler: Profiler | None = None) -> dict:
    """Visit records accepted durable (202) through `POST /v1/visits`, batches of 500, clients back to back."""
    assert env.lean is not None
    await env.wait_quiet(timeout=size.drain_timeout)
    bodies = build_bodies(env.households.regular, count=16, urgent_every=100)
    headers = _grid_platform_headers(env, size.intake_clients)
    done: list[tuple[float, int, float]] = []  # (completed at, status, seconds)
    errors: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client(c: int) -> None:
        i = c
        while not stop.is_set():
            body = bodies[i % len(bodies)][0]
            i += size.intake_clients
            t = time.perf_counter()
            try:
                r = await env.lean.post("/v1/visits", content=body, headers=keyed(headers[c]))
            except LeanHttpError as e:
                errors[type(e).__name__] += 1
                continue
            now = time.perf_counter()
            done.append((now, r.status_code, now - t))

    async with watch.load("intake"):
        tasks = [asyncio.create_task(client(c)) for c in range(size.intake_clients)]
        try:
            await asyncio.sleep(size.intake_warmup)
            env.check_services()
            metrics1 = await env.pipeline_metrics()
            window = watch.begin()
            if profiler:
                profiler.start("intake", size.intake_steady)
            await asyncio.sleep(size.intake_steady)
            measured = watch.end(window)
            metrics2 = await env.pipeline_metrics()
            t0, t1 = window[0], window[0] + measured.wall_s
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        if profiler:
            await profiler.finish()
    env.check_services()
    steady = [(s, d) for at, s, d in done if t0 <= at <= t1]
    accepted = [d for s, d in steady if s == 202]
    statuses = Counter(str(s) for s, _ in steady)
    rate = len(accepted) * BATCH / measured.wall_s
    problems = []
    if len(accepted) != len(steady) or errors:
        problems.append(f"not every request was accepted: statuses {dict(statuses)}, errors {dict(errors)}")
    if not accepted:
        problems.append("no request was accepted in the steady phase")
    return {
        "figure": round(rate, 1),
        "unit": "records/s",
        "problems": problems,
        "details": {
            "clients": size.intake_clients,
            "records_per_request": BATCH,
            "warmup_s": size.intake_warmup,
            "steady_s": round(measured.wall_s, 2),
            "requests_in_steady_phase": len(steady),
            "statuses": dict(statuses),
            "transport_errors": dict(errors),
            "request_p50_ms": _ms(percentile(accepted, 50)),
            "request_p99_ms": _ms(percentile(accepted, 99)),
            "note": "downstream consumers run meanwhile (registry, risk, gateway fold), as in production",
            "pipeline": pipeline_delta(metrics1, metrics2, measured.wall_s),
            **measured.as_dict(),
        },
    }


# --- 3. visits end to end ---------------------------------------------------------------------------
class VisitTally:
    """How many visits the REGISTRY stream holds up to each sequence, read as they are published: an event of
    visits.recorded carries a beat's share of a submission, one of visit.recorded a single visit."""

    def __init__(self, env: BenchEnv) -> None:
        self.env, self.seqs, self.totals, self.sub = env, [], [], None

    @property
    def total(self) -> int:
        return self.totals[-1] if self.totals else 0

    def upto(self, seq: int) -> int:
        """Visits in the events up to stream sequence `seq`."""
        i = bisect.bisect_right(self.seqs, seq)
        return self.totals[i - 1] if i else 0

    async def start(self, after_seq: int) -> None:
        async def on_msg(msg) -> None:
            subject = msg.subject
            if subject.startswith(VISITS_RECORDED + "."):
                n = len(orjson.loads(msg.data)["data"]["visits"])
            elif subject.startswith(VISIT_RECORDED + "."):
                n = 1
            else:
                return
            self.seqs.append(msg.metadata.sequence.stream)
            self.totals.append(self.total + n)

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
        self.sub = await self.env.js.subscribe("registry.>", ordered_consumer=True, cb=on_msg, config=config)

    async def settled(self, last_seq: int, timeout: float = 30.0) -> None:
        """Wait until every event up to `last_seq` was read."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            info = await self.sub.consumer_info()
            if (info.delivered.stream_seq or 0) >= last_seq and not info.num_pending:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


async def visits(env: BenchEnv, watch: Watch, size: Size, *, profiler: Profiler | None = None) -> dict:
    """Visits from the gateway through the registry (applied, settled back to the gateway) to risk (consumed).

    Clients keep at most `visits_window` visits accepted but not yet consumed by risk, so the phase is steady. The
    figure: visits risk's consumer acknowledged per second in the steady phase (REGISTRY stream sequences it
    acknowledged, counted in visits: a visits.recorded event carries a beat's share of a submission).
    """
    assert env.lean is not None
    await env.wait_quiet(timeout=size.drain_timeout)
    risk = await env.find_consumer("REGISTRY", takes=f"{VISITS_RECORDED}.X", durable_prefix="risk")
    fold = await env.find_consumer("REGISTRY", takes=SETTLED, durable_prefix="gateway")
    bodies = build_bodies(env.households.regular, count=16, urgent_every=100)
    headers = _grid_platform_headers(env, size.visits_clients)
    seq0 = await env.last_seq("REGISTRY")
    tally = VisitTally(env)
    await tally.start(seq0)
    settled0 = (await env.consumer_state("REGISTRY", fold))["acked"]
    alerts0 = await env.subject_count("RISK", f"{ALERT_RAISED}.>")
    state = {"accepted": 0, "inflight": 0, "consumed": 0, "urgent": 0}
    urgent_households: set[str] = set()
    submissions: list[tuple[str, int]] = []  # (submission id, client)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            acked_seq = (await env.consumer_state("REGISTRY", risk))["acked_seq"]
            state["consumed"] = tally.upto(acked_seq)
            await asyncio.sleep(0.05)

    async def client(c: int) -> None:
        i = c
        while not stop.is_set():
            if state["accepted"] + state["inflight"] * BATCH - state["consumed"] >= size.visits_window:
                await asyncio.sleep(0.005)
                continue
            body, urgent = bodies[i % len(bodies)]
            i += size.visits_clients
            state["inflight"] += 1
            try:
                r = await env.lean.post("/v1/visits", content=body, headers=keyed(headers[c]))
            except LeanHttpError as e:
                errors[type(e).__name__] += 1
                continue
            finally:
                state["inflight"] -= 1
            statuses[str(r.status_code)] += 1
            if r.status_code == 202:
                state["accepted"] += BATCH
                state["urgent"] += len(urgent)
                urgent_households.update(urgent)
                submissions.append((r.json()["submission_id"], c))

    async with watch.load("visits"):
        poller = asyncio.create_task(poll())
        tasks = [asyncio.create_task(client(c)) for c in range(size.visits_clients)]
        try:
            await asyncio.sleep(size.visits_warmup)
            env.check_services()
            risk1 = await env.consumer_state("REGISTRY", risk)
            settled1 = (await env.consumer_state("REGISTRY", fold))["acked"]
            metrics1 = await env.pipeline_metrics()
            window = watch.begin()
            if profiler:
                profiler.start("visits", size.visits_steady)
            await asyncio.sleep(size.visits_steady)
            risk2 = await env.consumer_state("REGISTRY", risk)
            settled2 = (await env.consumer_state("REGISTRY", fold))["acked"]
            measured = watch.end(window)
            metrics2 = await env.pipeline_metrics()
        finally:
            stop.set()
            await asyncio.gather(*tasks, poller, return_exceptions=True)
        if profiler:
            await profiler.finish()
        # Drain: every submission settled, then risk has nothing pending, and every alert is published.
        drain_started = time.perf_counter()
        deadline = drain_started + size.drain_timeout
        # Risk keeps one open alert per rule and household: repeated urgent visits add evidence to it.
        expected_alerts = len(urgent_households)
        settled = alerts = 0
        risk_done = False
        while time.perf_counter() < deadline:
            env.check_services()
            settled = (await env.consumer_state("REGISTRY", fold))["acked"] - settled0
            if settled >= len(submissions):
                now = await env.consumer_state("REGISTRY", risk)
                risk_done = now["pending"] == 0 and now["unacked"] == 0
                alerts = await env.subject_count("RISK", f"{ALERT_RAISED}.>") - alerts0
                if risk_done and alerts >= expected_alerts:
                    break
            await asyncio.sleep(0.2)
        drain_s = time.perf_counter() - drain_started
    env.check_services()
    registry_messages = await env.last_seq("REGISTRY") - seq0
    await tally.settled(seq0 + registry_messages)
    await tally.stop()
    recorded = tally.total
    outcome = await _check_submissions(env, submissions)
    rate = (tally.upto(risk2["acked_seq"]) - tally.upto(risk1["acked_seq"])) / measured.wall_s
    problems = []
    if settled < len(submissions):
        problems.append(f"{settled} of {len(submissions)} submissions settled within the drain timeout")
    if not risk_done:
        problems.append("risk had not consumed every visit within the drain timeout")
    if recorded != state["accepted"]:
        problems.append(f"{recorded} visits recorded for {state['accepted']} accepted")
    if alerts < expected_alerts:
        problems.append(f"{alerts} alerts raised for urgent visits to {expected_alerts} households")
    if outcome["not_applied"]:
        problems.append(f"{outcome['not_applied']} submissions not applied in full: {outcome['examples']}")
    if set(statuses) - {"202"} or errors:
        problems.append(f"not every request was accepted: statuses {dict(statuses)}, errors {dict(errors)}")
    return {
        "figure": round(rate, 1),
        "unit": "visits/s",
        "problems": problems,
        "details": {
            "measured_to": (
                f"risk's consumer ({risk}) acknowledged the event carrying the visit, i.e. its effects committed; "
                "urgent visits' alerts counted in the RISK stream after the drain (no 'risk profile updated' step yet)"
            ),
            "clients": size.visits_clients,
            "window_visits": size.visits_window,
            "warmup_s": size.visits_warmup,
            "steady_s": round(measured.wall_s, 2),
            "registry_settled_per_s": round((settled2 - settled1) * BATCH / measured.wall_s, 1),
            "accepted_visits": state["accepted"],
            "visits_recorded": recorded,
            "registry_messages": registry_messages,
            "visits_per_registry_message": round(recorded / registry_messages, 1) if registry_messages else None,
            "submissions": len(submissions),
            "submissions_applied": outcome["applied"],
            "urgent_visits": state["urgent"],
            "households_with_urgent_visits": expected_alerts,
            "alerts_raised": alerts,
            "alerts_note": "at least one alert per household with an urgent visit; other rules may raise more",
            "risk_redelivered": risk2["redelivered"],
            "drain_s": round(drain_s, 2),
            "statuses": dict(statuses),
            "pipeline": pipeline_delta(metrics1, metrics2, measured.wall_s),
            **measured.as_dict(),
        },
    }


async def _check_submissions(env: BenchEnv, submissions: list[tuple[str, int]]) -> dict:
    """Read every submission back through the gateway: each must be `applied` with all 500 records."""
    assert env.lean is not None
    tokens = {c: env.auth("grid_platform", f"grid-platform-{c}") for _, c in submissions}
    sem = asyncio.Semaphore(16)
    bad: list[str] = []

    async def one(sid: str, c: int) -> None:
        async with sem:
            r = await env.lean.get(f"/v1/submissions/{sid}", headers=tokens[c])
        body = r.json() if r.status_code == 200 else {}
        if body.get("status") != "applied" or body.get("applied") != BATCH:
            bad.append(f"{sid}: HTTP {r.status_code} {body.get('status')} applied={body.get('applied')}")

    await asyncio.gather(*(one(sid, c) for sid, c in submissions))
    return {"applied": len(submissions) - len(bad), "not_applied": len(bad), "examples": bad[:3]}


# --- 4. latency to the desk -------------------------------------------------------------------------
async def latency(env: BenchEnv, watch: Watch, size: Size, *, desk_clients: int | None = None) -> dict:
    """From a submission's 202 to its alert on every desk client's SSE stream, at a steady offered rate."""
    assert env.lean is not None and env.stack is not None
    await env.wait_quiet(timeout=size.drain_timeout)
    n_clients = desk_clients if desk_clients is not None else size.desk_clients
    regular, urgent_pool = env.households.regular, list(env.households.urgent)
    submitted: set[str] = set()  # urgent households whose visit was sent (each is used once)
    accepted: dict[str, tuple[float, bool]] = {}  # household -> (202 received at, in the steady phase)
    got: list[dict[str, float]] = [{} for _ in range(n_clients)]
    duplicates = [0]
    unexpected = [0]

    beats = env.households.beats

    def beat_of(household: str) -> int:  # codes are B<beat>H… and B<beat>U…
        return int(household[1:3])

    def on_alert(client: DeskClient, household: str, at: float) -> None:
        seen = got[client.index]
        if household in seen:
            duplicates[0] += 1
        elif household in submitted and beat_of(household) == client.index % beats:
            seen[household] = at
        else:
            unexpected[0] += 1  # not sent, or of a beat this officer is not assigned to

    # Desk officers spread over the beats, each assigned to one: the feed gives each its own beat's alerts.
    admin = env.auth("community_admin", "bench-desk-admin")
    sem = asyncio.Semaphore(16)

    async def assign(i: int) -> None:
        body = {"person": f"desk-{i}", "role": "officer", "area": f"BEAT{i % beats:02d}"}
        for _ in range(20):  # the gateway limits each caller's rate: wait as it says
            async with sem:
                r = await env.http.post("/v1/assignments", json=body, headers=admin)
            if r.status_code in (201, 409):
                return
            if r.status_code not in (429, 503):
                break
            await asyncio.sleep(min(float(r.headers.get("retry-after") or 0.2), 2.0))
        raise RuntimeError(f"assigning desk-{i}: HTTP {r.status_code} {r.text[:300]}")

    await asyncio.gather(*(assign(i) for i in range(n_clients)))
    await env.wait_quiet(timeout=size.drain_timeout)
    url = env.stack.url("gateway") + "/v1/alerts/stream"
    clients = [DeskClient(url, env.token("police", f"desk-{i}"), on_alert=on_alert, index=i) for i in range(n_clients)]
    connect_started = time.perf_counter()
    for c in clients:
        c.start()
    await _wait_connected(clients, timeout=30)
    connect_s = time.perf_counter() - connect_started
    connected = [c for c in clients if c.connected.is_set() and not c.closed.is_set()]
    failed = {f"{c.index}": c.error or "not connected" for c in clients if c not in connected}

    # Many grid workers, each sending small batches (the gateway limits each caller's rate).
    workers = [env.auth("grid_worker", f"grid-worker-{i:03d}") | JSON for i in range(size.latency_grid_workers)]
    visited_at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    rng = random.Random(4)
    urgent_every = max(1, round(1 / size.latency_urgent_share))
    interval = size.latency_batch / size.latency_rate
    duration = size.latency_warmup + size.latency_steady
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    inflight: set[asyncio.Task] = set()
    request_times: list[float] = []
    skipped = 0
    record = 0
    accepted_steady_records = 0

    async def post(body: bytes, urgent: list[str], steady: bool, headers: dict[str, str]) -> None:
        nonlocal accepted_steady_records
        sent = time.perf_counter()
        try:
            r = await env.lean.post("/v1/visits", content=body, headers=keyed(headers))
        except LeanHttpError as e:
            errors[type(e).__name__] += 1
            return
        at = time.perf_counter()
        if steady:
            request_times.append(at - sent)
        statuses[str(r.status_code)] += 1
        if r.status_code == 202:
            for household in urgent:
                accepted[household] = (at, steady)
            accepted_steady_records += size.latency_batch if steady else 0

    async with watch.load("latency"):
        started = time.perf_counter()
        window = None
        n = 0
        while True:
            target = started + n * interval
            now = time.perf_counter()
            if target > now:
                await asyncio.sleep(target - now)
            elapsed = time.perf_counter() - started
            if elapsed >= duration:
                break
            steady = elapsed >= size.latency_warmup
            if steady and window is None:
                env.check_services()
                metrics1 = await env.pipeline_metrics()
                window = watch.begin()
            records, urgent = [], []
            for _ in range(size.latency_batch):
                if record % urgent_every == 0 and urgent_pool:
                    household = urgent_pool.pop(0)
                    urgent.append(household)
                    records.append(_record(household, visited_at, ["urgent"]))
                else:
                    records.append(_record(rng.choice(regular), visited_at, []))
                record += 1
            n += 1
            if len(inflight) >= 256:
                skipped += 1
                continue
            submitted.update(urgent)
            body = orjson.dumps({"visits": records})
            task = asyncio.create_task(post(body, urgent, steady, workers[n % len(workers)]))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        measured = watch.end(window) if window else None
        pipeline = pipeline_delta(metrics1, await env.pipeline_metrics(), measured.wall_s) if measured else {}
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
        # Wait until every connected client has every accepted urgent visit's alert (or the drain timeout).
        drain_started = time.perf_counter()
        expected = [{h for h in accepted if beat_of(h) == b} for b in range(beats)]
        while time.perf_counter() - drain_started < size.latency_drain_timeout:
            env.check_services()
            if all(expected[c.index % beats] <= got[c.index].keys() for c in connected if not c.closed.is_set()):
                break
            await asyncio.sleep(0.1)
        drain_s = time.perf_counter() - drain_started
        dropped = [c.index for c in connected if c.closed.is_set()]
        other_events = Counter()
        for c in clients:
            other_events.update(c.other_events)
        for c in clients:
            await c.stop()

    beats_seen = sorted({len(c.beats) for c in connected}) or [0]
    # Each desk client is assigned one beat: it should see that beat's alerts and no other's.
    filters_by_beat = beats_seen[-1] <= 1 and len(accepted) >= env.households.beats
    latencies, fastest = [], []
    missed = 0
    for household, (at, steady) in accepted.items():
        per_alert = []
        for c in connected:
            if c.index % beats != beat_of(household):
                continue
            arrived = got[c.index].get(household)
            if arrived is None:
                missed += 1
            elif steady:
                per_alert.append(arrived - at)
        latencies += per_alert
        if per_alert:
            fastest.append(min(per_alert))
    missed += sum(len(expected[int(i) % beats]) for i in failed) if accepted else 0
    wall = measured.wall_s if measured else size.latency_steady
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {n_clients} desk clients could not connect: the machine did not hold them")
    if missed:
        problems.append(f"{missed} alert deliveries missed (urgent visit x client)")
    if dropped:
        problems.append(f"{len(dropped)} desk clients were disconnected during the run")
    if unexpected[0]:
        problems.append(f"{unexpected[0]} alerts reached a desk client outside its beat (or were never sent)")
    if set(statuses) - {"202"} or errors:
        problems.append(f"not every request was accepted: statuses {dict(statuses)}, errors {dict(errors)}")
    warnings = []
    if skipped:
        warnings.append(
            f"the offered rate was not held: {skipped} submissions not sent while 256 requests were in flight; "
            "the stack did not absorb this rate here, so latency includes queueing"
        )
    p50, p99, worst = percentile(latencies, 50), percentile(latencies, 99), max(latencies, default=None)
    return {
        "figure": _ms(p50),
        "unit": "ms (p50)",
        "figures": {"p50_ms": _ms(p50), "p99_ms": _ms(p99), "max_ms": _ms(worst), "missed": missed},
        "problems": problems,
        "warnings": warnings,
        "details": {
            "pipeline": pipeline,
            "measured": "from the 202 reaching the client to the alert event parsed on each desk client's SSE stream",
            "offered_records_per_s": size.latency_rate,
            "accepted_records_per_s_steady": round(accepted_steady_records / wall, 1),
            "records_per_submission": size.latency_batch,
            "urgent_share": size.latency_urgent_share,
            "desk_clients": n_clients,
            "desk_clients_connected": len(connected),
            "desk_clients_failed": dict(list(failed.items())[:5]),
            "connect_s": round(connect_s, 2),
            "beats": env.households.beats,
            "feed_filters_by_beat": filters_by_beat,
            "beats_seen_per_client": {"min": beats_seen[0], "max": beats_seen[-1]},
            "beats_note": (
                f"households are spread over {env.households.beats} beats; each desk client received alerts of "
                f"{beats_seen[0]} to {beats_seen[-1]} beats: "
                + (
                    "the feed narrows by beat"
                    if filters_by_beat
                    else "the feed did not narrow by beat although each desk client is assigned one"
                )
            ),
            "urgent_visits_accepted": len(accepted),
            "urgent_visits_in_steady_phase": sum(1 for _, s in accepted.values() if s),
            "deliveries_measured": len(latencies),
            "pipeline_p50_ms": _ms(percentile(fastest, 50)),
            "pipeline_p99_ms": _ms(percentile(fastest, 99)),
            "pipeline_note": "pipeline = the first client to get each alert; the rest is fan-out to the others",
            "duplicates": duplicates[0],
            "unexpected_alerts": unexpected[0],
            "other_sse_events": dict(other_events),
            "submissions_not_offered": skipped,
            "request_p50_ms": _ms(percentile(request_times, 50)),
            "request_p99_ms": _ms(percentile(request_times, 99)),
            "statuses": dict(statuses),
            "drain_s": round(drain_s, 2),
            **(measured.as_dict() if measured else {}),
        },
    }


async def _wait_connected(clients: list[DeskClient], *, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(c.connected.is_set() or c.closed.is_set() for c in clients):
            return
        await asyncio.sleep(0.05)


# --- 6. footprint -------------------------------------------------------------------------------------
def footprint(watch: Watch, *, goal_mb: float) -> dict:
    """Each service's resident memory idle and its peak under the scenarios' load."""
    per_service = {}
    for name in watch.services:
        peaks = {label: p[name] for label, p in watch.rss_peak.items() if name in p}
        top = max(peaks, key=peaks.get) if peaks else None
        per_service[name] = {
            "idle_mb": round(watch.rss_idle.get(name, 0.0), 1),
            "peak_mb": round(peaks[top], 1) if top else None,
            "peak_during": top,
            "peak_by_scenario_mb": {k: round(v, 1) for k, v in peaks.items()},
        }
    worst = max(per_service, key=lambda n: per_service[n]["peak_mb"] or per_service[n]["idle_mb"])
    figure = per_service[worst]["peak_mb"] or per_service[worst]["idle_mb"]
    over = [n for n, v in per_service.items() if (v["peak_mb"] or v["idle_mb"]) > goal_mb]
    return {
        "figure": figure,
        "unit": f"MB RSS (largest: {worst})",
        "problems": [],
        "met_detail": {"over_goal": over},
        "details": {"per_service": per_service, "sampled": "psutil RSS every 0.25 s during each load scenario"},
    }


# --- 2. sightings end to end ------------------------------------------------------------------------------
WATCHED = "鲁B"  # watch-listed plates; every other sighting is of a 鲁E plate, on no list


async def sightings(env: BenchEnv, watch: Watch, size: Size) -> dict:
    """Gate sightings in batches of 500 through `POST /v1/sightings`, 1% of them of a watch-listed plate (each seen
    once, so each raises its own alert): sightings per second from the first request to the last alert on a desk's
    SSE stream, after a warm-up of sightings that match nothing."""
    assert env.lean is not None and env.stack is not None and env.http is not None
    await env.wait_quiet(timeout=size.drain_timeout)
    beats = sorted({code[:3] for code in env.households.regular})  # B00, B01…: a gate at each beat's first grid
    gates = [f"GATE{b[1:]}" for b in beats]
    for b, gate in zip(beats, gates, strict=True):
        body = {"code": gate, "name": f"{b}北门", "grid": f"G{b[1:]}0", "beat": f"BEAT{b[1:]}"}
        r = await env.http.post("/v1/gates", json=body, headers=env.auth("police", "bench-gatekeeper"))
        if r.status_code not in (201, 409):
            raise RuntimeError(f"gate {gate}: HTTP {r.status_code} {r.text[:300]}")
    per_batch = max(1, round(BATCH * size.sightings_match_share))
    batches = math.ceil(size.sightings_total / BATCH)
    watched = [f"{WATCHED}{k:05d}" for k in range(batches * per_batch)]
    sem = asyncio.Semaphore(16)

    async def listed(k: int, plate: str) -> None:
        body = {"kind": "plate", "plate": plate, "level": "MEDIUM", "reason": "bench: wanted vehicle"}
        async with sem:
            for _ in range(20):
                r = await env.http.post("/v1/watchlists", json=body, headers=env.auth("police", f"bench-po-{k % 64}"))
                if r.status_code in (201, 409):
                    return
                if r.status_code not in (429, 503):
                    raise RuntimeError(f"watch-list {plate}: HTTP {r.status_code} {r.text[:300]}")
                await asyncio.sleep(0.2)

    raised0 = await env.subject_count("RISK", f"{ALERT_RAISED}.>")
    t = time.perf_counter()
    await asyncio.gather(*(listed(k, p) for k, p in enumerate(watched)))
    listed_s = time.perf_counter() - t
    rng = random.Random(9)

    def body(batch: int, *, matching: bool) -> bytes:
        seen_at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        records = [
            {"gate": gates[(batch + i) % len(gates)], "seen_at": seen_at, "plate": f"鲁E{rng.randrange(100000):05d}"}
            for i in range(BATCH)
        ]
        if matching:
            for j in range(per_batch):
                records[j * (BATCH // per_batch)]["plate"] = watched[batch * per_batch + j]
        return orjson.dumps({"sightings": records})

    seen: dict[str, float] = {}
    duplicates = [0]
    all_seen = asyncio.Event()

    def on_raised(_client: DeskClient, data: dict, at: float) -> None:
        explanation = data.get("explanation", "")
        if data.get("rule") != "watchlist" or WATCHED not in explanation:
            return
        key = data.get("alert_id", explanation)
        if key in seen:
            duplicates[0] += 1
        seen[key] = at
        if len(seen) == len(watched):
            all_seen.set()

    desk = DeskClient(
        env.stack.url("gateway") + "/v1/alerts/stream",
        env.token("police", "desk-sightings"),
        on_alert=lambda *_: None,
        on_raised=on_raised,
    )
    desk.start()
    await _wait_connected([desk], timeout=30)
    if not desk.connected.is_set():
        raise RuntimeError(f"the desk client did not connect: {desk.error}")
    headers = [env.auth("gate_system", f"gate-system-{c}") | JSON for c in range(size.sightings_clients)]
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()

    async def send(todo: list[int], c: int, *, matching: bool) -> None:
        while todo:
            batch = todo.pop(0)
            try:
                r = await env.lean.post(
                    "/v1/sightings", content=body(batch, matching=matching), headers=keyed(headers[c])
                )
            except LeanHttpError as e:
                errors[type(e).__name__] += 1
                continue
            statuses[str(r.status_code)] += 1

    try:
        warm = list(range(max(1, round(size.sightings_warmup_total / BATCH))))
        await asyncio.gather(*(send(warm, c, matching=False) for c in range(size.sightings_clients)))
        await env.wait_quiet(timeout=size.drain_timeout)
        statuses.clear()
        todo = list(range(batches))
        async with watch.load("sightings"):
            window = watch.begin()
            t0 = time.perf_counter()
            await asyncio.gather(*(send(todo, c, matching=True) for c in range(size.sightings_clients)))
            accepted_s = time.perf_counter() - t0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_seen.wait(), size.drain_timeout)
            measured = watch.end(window)
    finally:
        await desk.stop()
    env.check_services()
    total = batches * BATCH
    last = max(seen.values(), default=t0)
    end_to_end_s = last - t0
    raised = await env.subject_count("RISK", f"{ALERT_RAISED}.>") - raised0
    missed = len(watched) - len(seen)
    problems = []
    if missed:
        problems.append(f"{missed} of {len(watched)} watch-list alerts missed")
    if set(statuses) - {"202"} or errors:
        problems.append(f"not every request was accepted: statuses {dict(statuses)}, errors {dict(errors)}")
    return {
        "figure": round(total / end_to_end_s, 1) if end_to_end_s > 0 and not missed else None,
        "unit": "sightings/s end to end",
        "problems": problems,
        "details": {
            "sightings": total,
            "matching": len(watched),
            "alerts_seen": len(seen),
            "duplicate_alerts": duplicates[0],
            "desk_reconnects": desk.reconnects,
            "desk_other_events": desk.other_events,
            "alerts_raised_in_stream": raised,
            "missed": missed,
            "accepted_rate": round(total / accepted_s, 1),
            "end_to_end_s": round(end_to_end_s, 2),
            "clients": size.sightings_clients,
            "warmup_sightings": len(range(max(1, round(size.sightings_warmup_total / BATCH)))) * BATCH,
            "watch_list_entries_made_s": round(listed_s, 1),
            "statuses": dict(statuses),
            **measured.as_dict(),
        },
    }


# --- 5. registry at city scale ------------------------------------------------------------------------------
async def import_(env: BenchEnv, watch: Watch, size: Size) -> dict:
    """A generated CSV of persons (1 to 5 per household, 15% floating) streamed to `POST /v1/imports`, as
    `jinshui import` sends it: rows per second; then household cards read one at a time through the gateway."""
    import tempfile
    from pathlib import Path

    from bench.registry_scale import make_csv

    assert env.http is not None and env.root is not None
    await env.wait_quiet(timeout=size.drain_timeout)
    # A city district of its own: one beat over 11 grids, set up as a community admin does.
    admin_json = env.auth("community_admin", "bench-importer")
    grids = [f"CG{g:02d}" for g in range(1, 12)]
    for path, body in [
        ("/v1/beats", {"code": "CITY", "name": "城区警格"}),
        *[("/v1/grids", {"code": g, "name": f"城区{g}网格", "beat": "CITY"}) for g in grids],
    ]:
        made = await env.http.post(path, json=body, headers=admin_json)
        if made.status_code not in (201, 409):
            raise RuntimeError(f"{path}: HTTP {made.status_code} {made.text[:300]}")
    csv = Path(tempfile.mkdtemp(dir=env.root)) / "persons.csv"
    households = await asyncio.to_thread(make_csv, csv, size.import_rows, grids=grids)
    admin = env.auth("community_admin", "bench-importer") | {"Content-Type": "text/csv"}

    async def blocks():
        with csv.open("rb") as f:
            while block := f.read(256 * 1024):
                yield block

    async with watch.load("import"):
        window = watch.begin()
        t0 = time.perf_counter()
        r = await env.http.post("/v1/imports", content=blocks(), headers=admin, timeout=3600)
        took = time.perf_counter() - t0
        measured = watch.end(window)
    if r.status_code != 200:
        raise RuntimeError(f"import: HTTP {r.status_code} {r.text[:500]}")
    summary = orjson.loads(r.content.splitlines()[0])
    codes = [c for c in (await _household_codes(env)) if c]
    rng = random.Random(11)
    times: list[float] = []
    statuses: Counter[str] = Counter()
    for i, code in enumerate(rng.choices(codes, k=size.import_cards + 50)):
        t = time.perf_counter()
        got = await env.http.get(f"/v1/households/{code}", headers=env.auth("police", f"bench-card-{i % 64}"))
        if i >= 50:  # the first 50 warm up
            times.append(time.perf_counter() - t)
            statuses[str(got.status_code)] += 1
    problems = []
    if summary["rejected"] or summary["applied"] != size.import_rows:
        first = r.content.splitlines()[1:4]
        problems.append(f"not every row was applied: {summary}; first rejections: {first}")
    if set(statuses) - {"200"}:
        problems.append(f"household card answers {dict(statuses)}")
    return {
        "figure": round(size.import_rows / took, 1),
        "unit": "rows/s",
        "problems": problems,
        "figures": {"card_p50_ms": _ms(percentile(times, 50)), "card_p99_ms": _ms(percentile(times, 99))},
        "details": {
            "rows": size.import_rows,
            "households_in_file": households,
            "csv_mb": round(csv.stat().st_size / 1e6, 1),
            "import_s": round(took, 1),
            "summary": {k: v for k, v in summary.items() if k != "import_id"},
            "households_registered": len(codes),
            "cards_read": len(times),
            "card_statuses": dict(statuses),
            **measured.as_dict(),
        },
    }


async def _household_codes(env: BenchEnv) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(env.database_url)
    try:
        return [r["code"] for r in await conn.fetch("SELECT code FROM registry.households")]
    finally:
        await conn.close()
