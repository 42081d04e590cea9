"""`jinshui replay risk`: risk's state rebuilt from its input streams equals the live one; a row changed behind
the handlers' back is reported as a difference."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime

import asyncpg
import httpx

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .e2e.settle import caught_up


async def jinshui(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jinshui.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_risk_rebuilt_from_its_streams_equals_the_live_state(stack, servers, service_env, database_url):
    home = service_env["JINSHUI_HOME"]
    s = await stack()
    admin = {"Authorization": f"Bearer {issue_token(home=home, role='community_admin')}"}
    worker = {"Authorization": f"Bearer {issue_token(home=home, role='grid_worker', sub='gw-1')}"}
    codes = [f"RP{i:03d}" for i in range(8)]
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=30) as gw:
        for i, code in enumerate(codes):
            body = {"code": code, "address": f"金水小区3-{i % 4 + 1}-{i:03d}", "grid": "G01", "beat": "B1"}
            assert (await gw.post("/v1/households", json=body, headers=admin)).status_code == 201
        visits = [
            {"household_code": c, "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]} for c in codes
        ]
        r = await gw.post("/v1/visits", json={"visits": visits}, headers=worker)
        assert r.status_code == 202, r.text

    async def alerts():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM risk.alerts") >= len(codes)
        finally:
            await conn.close()

    await eventually(alerts, timeout=30, what="an alert per household")
    # Everything published is taken before the stop: the replay reads the streams whole, so an event risk had yet
    # to take when stopped would be in the rebuilt state and not the live one.
    await caught_up(s)
    await s.stop()

    env = {**service_env, "PATH": os.environ.get("PATH", "")}
    rc, out, err = await jinshui(env, "replay", "risk", "--json")
    assert rc == 0, err + out
    report = json.loads(out)
    assert report["equal"] is True and report["refused"] == []
    assert report["applied"] >= len(codes)
    by_table = {t["table"]: t for t in report["tables"]}
    assert by_table["alerts"]["live"] == by_table["alerts"]["rebuilt"] >= len(codes)
    assert by_table["outbox"]["live"] == by_table["outbox"]["rebuilt"] > 0  # the same event ids, derived
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'replay_risk'") == 0
        # A change no input explains.
        await conn.execute("UPDATE risk.alerts SET level = 'LOW' WHERE household_code = $1", codes[0])
    finally:
        await conn.close()

    rc, out, err = await jinshui(env, "replay", "risk")
    assert rc == 1, err + out
    assert "alerts" in out and "DIFFERS" in out and "the rebuilt state differs" in out
    differing = [line.split()[0] for line in out.splitlines() if line.endswith("DIFFERS")]
    assert differing == ["alerts"]
