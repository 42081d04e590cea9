"""Scope: an officer assigned to a beat sees that beat's alerts and incidents only (404 outside it); the owner
services learn the assignments from the registry's events."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .settle import caught_up


async def test_an_officer_sees_only_their_beat(stack, service_env):
    s = await stack()
    home = service_env["JINSHUI_HOME"]

    def auth(role, sub=None, **extra):
        return {"Authorization": f"Bearer {issue_token(home=home, role=role, sub=sub)}", **extra}

    admin, officer, other = auth("community_admin"), auth("police", "officer-1"), auth("police", "officer-9")
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=30) as gw:

        async def ok(path, body, headers, status=201):
            r = await gw.post(path, json=body, headers=headers)
            assert r.status_code == status, r.text
            return r.json()

        codes = {}
        for beat, grid in (("B1", "G1"), ("B2", "G2")):
            await ok("/v1/beats", {"code": beat, "name": beat}, admin)
            await ok("/v1/grids", {"code": grid, "name": grid, "beat": beat}, admin)
            codes[beat] = (await ok("/v1/households", {"address": f"{grid} 1-1-101", "grid": grid}, admin))["code"]
        await ok("/v1/assignments", {"person": "officer-1", "role": "officer", "area": "B1"}, admin)
        now = datetime.now(UTC).isoformat()
        worker = auth("grid_worker", "gw-1", Prefer="wait=20")
        visits = [{"household_code": c, "visited_at": now, "concerns": ["urgent"]} for c in codes.values()]
        assert (await ok("/v1/visits", {"visits": visits}, worker, 200))["status"] == "applied"
        calls = [
            {"call_id": f"110-S-{b}", "received_at": now, "category": "theft", "household_code": c}
            for b, c in codes.items()
        ]
        pp = auth("police_platform", "pp", Prefer="wait=20", **{"Idempotency-Key": "scope-calls"})
        assert (await ok("/v1/police-calls", {"calls": calls}, pp, 200))["status"] == "applied"

        async def beats_seen(path, key, headers):
            r = await gw.get(path, headers=headers)
            return sorted(x["beat"] for x in r.json()[key])

        # Both alerts are raised (each visit on its own) and risk and incidents have the assignment, before what the
        # officer sees is looked at: else "B1 only" could pass while B2's alert is still on its way.
        both = ["B1", "B2"]
        await eventually(lambda: _eq(beats_seen("/v1/alerts", "alerts", other), both), what="both alerts raised")
        await caught_up(s)
        assert await eventually(lambda: _eq(beats_seen("/v1/alerts", "alerts", officer), ["B1"]), what="B1 only")
        assert await eventually(lambda: _eq(beats_seen("/v1/incidents", "items", officer), ["B1"]), what="B1 only")
        assert await beats_seen("/v1/alerts", "alerts", other) == both, "an officer with no beat: all"

        b2_alert = next(a for a in (await gw.get("/v1/alerts", headers=other)).json()["alerts"] if a["beat"] == "B2")
        assert (await gw.get(f"/v1/alerts/{b2_alert['id']}", headers=officer)).status_code == 404
        r = await gw.post(f"/v1/alerts/{b2_alert['id']}/acknowledge", json={}, headers=officer)
        assert r.status_code == 404
        b2_incident = next(
            i for i in (await gw.get("/v1/incidents", headers=other)).json()["items"] if i["beat"] == "B2"
        )
        assert (await gw.get(f"/v1/incidents/{b2_incident['id']}", headers=officer)).status_code == 404
        assert (await gw.get(f"/v1/households/{codes['B2']}", headers=officer)).status_code == 404
        assert (await gw.get(f"/v1/households/{codes['B1']}", headers=officer)).status_code == 200


async def _eq(coro, expected):
    return await coro == expected
