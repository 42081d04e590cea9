"""Faults survived with nothing lost and nothing doubled: SIGKILL, server restarts, a frozen service, a stream
leader killed in a NATS cluster, a full store.

`make test` runs each at a small size; `make faults` at FAULTS_SIZE=20000 records of mixed load (visits, police
calls, grid reports, gate sightings).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest

from jinshui.kit.testing import eventually

from .harness import SIZE, Load, Observer, Platform, check

SERVICES = ("registry", "incidents", "risk", "gateway")


async def run_with_faults(tmp_path, inject, *, nats_extra: str = "", nats_cluster: int = 1, name: str):
    phases: dict[str, float] = {}
    started = time.monotonic()
    async with Platform(tmp_path, nats_extra=nats_extra, nats_cluster=nats_cluster) as p:
        load = Load(p)
        await load.prepare()
        phases["start"] = time.monotonic() - started
        observer = Observer(p)
        observer.start()
        try:
            faults = asyncio.create_task(inject(p, load))
            await load.run()
            phases["load"] = time.monotonic() - started - phases["start"]
            recovery = await faults
            report = await check(p, load, observer)
            report.recovery_seconds = recovery or 0.0
            phases["settled"] = time.monotonic() - started - phases["start"] - phases["load"]
        finally:
            await observer.stop()
    print(report.line(name), "in", " ".join(f"{k}={v:.1f}s" for k, v in phases.items()))
    assert report.lost == [], report.lost[:10]
    assert report.duplicated == [], report.duplicated[:10]
    assert report.applied == report.accepted
    return report


async def _progress(load: Load, fraction: float) -> None:
    target = max(1, int(SIZE * fraction))
    await eventually(lambda: load.accepted_records >= target, timeout=300, what="load progress")


async def test_services_killed_at_random_moments(tmp_path):
    rng = random.Random(7)

    async def inject(p: Platform, load: Load) -> float:
        worst = 0.0
        for i, name in enumerate(rng.sample(SERVICES, len(SERVICES)) * 2):
            await _progress(load, (i + 1) / 10)
            await asyncio.sleep(rng.random() * 0.3)
            p.stack.kill(name, signal.SIGKILL)
            await p.stack.wait_exit(name, 10)
            started = time.monotonic()
            await p.stack.start_service(name, timeout=90)
            worst = max(worst, time.monotonic() - started)
        return worst

    await run_with_faults(tmp_path, inject, name="sigkill")


async def test_nats_and_postgres_restarted_under_load(tmp_path):
    async def inject(p: Platform, load: Load) -> float:
        await _progress(load, 0.25)
        p.nats.restart()
        nats_recovery = await p.ready()
        await _progress(load, 0.6)
        p.pg.restart()
        return max(nats_recovery, await p.ready())

    await run_with_faults(tmp_path, inject, name="restarts")


async def test_a_frozen_service_catches_up_when_it_thaws(tmp_path):
    async def inject(p: Platform, load: Load) -> float:
        await _progress(load, 0.2)
        for name in ("risk", "registry"):
            p.stack.kill(name, signal.SIGSTOP)
            await asyncio.sleep(3)  # frozen long enough for its NATS connection to go stale
            p.stack.kill(name, signal.SIGCONT)
        return await p.ready()

    await run_with_faults(tmp_path, inject, name="sigstop")


async def test_the_intake_stream_leader_killed_in_a_three_server_cluster(tmp_path):
    """Three nats-servers with cluster routes, every stream and KV bucket on three replicas: the INTAKE stream's
    leader is killed -9 mid-run and restarted; submissions ride through the election (503s, retried)."""

    async def inject(p: Platform, load: Load) -> float:
        await _progress(load, 0.3)
        nc = await p.admin_nats()
        try:
            js = nc.jetstream()
            leader = (await js.stream_info("INTAKE")).cluster.leader
            killed_at = time.monotonic()
            p.nats_server(leader).kill()
            recovery = await load.probe() - killed_at
            await eventually(lambda: _intake_leader(js, other_than=leader), timeout=60, what="a new INTAKE leader")
            p.nats_server(leader).start()
            await eventually(lambda: _intake_replicas_current(js), timeout=60, what="the restarted replica current")
        finally:
            await nc.close()
        return recovery

    await run_with_faults(tmp_path, inject, nats_cluster=3, name="cluster-leader")


async def _intake_leader(js, *, other_than: str) -> str | None:
    try:
        leader = (await js.stream_info("INTAKE")).cluster.leader
    except Exception:  # no leader yet: the request times out or finds no responders
        return None
    return leader if leader != other_than else None


async def _intake_replicas_current(js) -> bool:
    try:
        cluster = (await js.stream_info("INTAKE")).cluster
    except Exception:
        return False
    return cluster.leader is not None and len(cluster.replicas or []) == 2 and all(r.current for r in cluster.replicas)


@pytest.mark.parametrize("store", ["4MB"])
async def test_a_full_store_is_refused_with_503_not_accepted_and_lost(tmp_path, store):
    """JetStream with little room: the gateway answers 503 rather than accept what it cannot keep."""

    async def inject(p: Platform, load: Load) -> float:
        return 0.0

    nats_extra = f"jetstream {{ max_file_store: {store} }}"
    async with Platform(tmp_path, nats_extra=nats_extra) as p:
        headers = {**p.auth("gate_system", "gate-1")}
        r = await p.http.post(
            "/v1/gates", json={"code": "N1", "name": "北门", "grid": "G", "beat": "B"}, headers=p.auth("police")
        )
        assert r.status_code == 201
        big = {
            "sightings": [{"gate": "N1", "seen_at": "2026-11-26T08:00:00Z", "plate": f"鲁X{i:05d}"} for i in range(500)]
        }
        statuses = []
        for i in range(200):
            r = await p.http.post("/v1/sightings", json=big, headers={**headers, "Idempotency-Key": f"k{i}"})
            statuses.append(r.status_code)
            if r.status_code == 503:
                break
        assert statuses[-1] == 503, f"never refused: {statuses[-5:]}"
        assert r.headers["content-type"] == "application/problem+json" and r.headers.get("retry-after")
        assert set(statuses[:-1]) == {202}
