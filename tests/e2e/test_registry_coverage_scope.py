"""Monthly visit coverage per grid (months in Asia/Shanghai) and a grid worker's households due; scope: grid
workers see the households of their grids, officers those of their beat, 404 outside; admins see everything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest_asyncio

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .test_registry_areas import Registry
from .test_registry_residents import ZHANG, arrival, submit

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest_asyncio.fixture
async def community(stack, service_env, servers, stream_prefix):
    s = await stack(services=("registry", "gateway"))
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        await client.set_up_areas()  # B1 covers G01 and G02; G03 is not covered yet
        await client.ok("POST", "/v1/beats", json={"code": "B2", "name": "二警格", "grids": ["G03"]}, status=201)
        client.codes = {}
        for grid, address in (("G01", "1号楼101"), ("G01", "1号楼102"), ("G01", "1号楼103"), ("G03", "9号楼101")):
            made = await client.ok("POST", "/v1/households", json={"address": address, "grid": grid}, status=201)
            client.codes[address] = made["code"]
        yield client


def shanghai_month_after(now: datetime, months: int) -> datetime:
    local = now.astimezone(SHANGHAI)
    index = local.year * 12 + local.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=SHANGHAI)


async def test_coverage_counts_visits_in_the_shanghai_month(community):
    # Next month (M) and the one after, seen from a clock moved past both: households exist all along.
    now = datetime.now(UTC)
    m, m1 = shanghai_month_after(now, 1), shanghai_month_after(now, 2)
    advance(community.clock_file, (m1 - now).total_seconds() + 86400)
    label, label1 = m.strftime("%Y-%m"), m1.strftime("%Y-%m")
    c = community.codes
    visits = [
        {"household_code": c["1号楼101"], "visited_at": (m + timedelta(minutes=30)).isoformat()},
        {"household_code": c["1号楼102"], "visited_at": (m - timedelta(minutes=30)).isoformat()},  # the month before
        {"household_code": c["1号楼103"], "visited_at": (m1 + timedelta(minutes=10)).isoformat()},  # the month after
    ]
    assert (await submit(community, "/v1/visits", {"visits": visits}))["status"] == "applied"
    month = await community.ok("GET", f"/v1/grids/G01/coverage?month={label}", role="police")
    assert (month["households"], month["visited"], month["coverage"]) == (3, 1, 0.3333)
    assert [h["code"] for h in month["not_visited"]] == [c["1号楼102"], c["1号楼103"]]
    after = await community.ok("GET", f"/v1/grids/G01/coverage?month={label1}")
    assert after["visited"] == 1 and {h["code"] for h in after["not_visited"]} == {c["1号楼101"], c["1号楼102"]}
    r = await community.get("/v1/grids/G01/coverage?month=2026-13", headers=community.auth("police"))
    assert r.status_code == 422

    await community.ok(
        "POST", "/v1/assignments", json={"person": "gw-1", "role": "grid_worker", "area": "G01"}, status=201
    )
    due = await community.ok(
        "GET", f"/v1/my/households-due?month={label1}", headers=community.auth("grid_worker", "gw-1")
    )
    assert due["grids"] == ["G01"] and due["households"] == 3 and due["visited"] == 1
    assert [h["code"] for h in due["due"]] == [c["1号楼101"], c["1号楼102"]]


async def test_scope_follows_assignments(community):
    c = community.codes
    mine, theirs = c["1号楼101"], c["9号楼101"]
    body = {"arrivals": [arrival(theirs, ZHANG, "张伟")]}
    assert (await submit(community, "/v1/residents/arrivals", body))["status"] == "applied"

    # Before any assignment, nobody is narrowed.
    assert await community.ok("GET", f"/v1/households/{theirs}", headers=community.auth("grid_worker", "gw-1"))
    await community.ok(
        "POST", "/v1/assignments", json={"person": "gw-1", "role": "grid_worker", "area": "G01"}, status=201
    )
    await community.ok("POST", "/v1/assignments", json={"person": "po-1", "role": "officer", "area": "B1"}, status=201)
    gw, po = community.auth("grid_worker", "gw-1"), community.auth("police", "po-1")

    for headers in (gw, po):
        assert (await community.get(f"/v1/households/{mine}", headers=headers)).status_code == 200
        for path in (f"/v1/households/{theirs}", f"/v1/households/{theirs}/history", f"/v1/households/{theirs}/qr"):
            r = await community.get(path, headers=headers)
            assert r.status_code == 404, (path, r.text)
        r = await community.get("/v1/grids/G03/coverage", headers=headers)
        assert r.status_code == 404
        found = await community.post("/v1/persons/search", json={"name_prefix": "张"}, headers=headers)
        assert found.json()["persons"] == []
    person_id = (await community.ok("GET", f"/v1/households/{theirs}"))["residents"][0]["person_id"]
    assert (await community.get(f"/v1/persons/{person_id}", headers=po)).status_code == 404

    # The officer of B2 sees G03; the admin sees everything; a grid worker of no grid is not narrowed.
    await community.ok("POST", "/v1/assignments", json={"person": "po-2", "role": "officer", "area": "B2"}, status=201)
    po2 = community.auth("police", "po-2")
    assert (await community.get(f"/v1/households/{theirs}", headers=po2)).status_code == 200
    assert (await community.get(f"/v1/persons/{person_id}", headers=po2)).status_code == 200
    assert (await community.get(f"/v1/households/{mine}", headers=po2)).status_code == 404
    found = await community.post("/v1/persons/search", json={"name_prefix": "张"}, headers=po2)
    assert [p["name"] for p in found.json()["persons"]] == ["张伟"]
    assert (await community.ok("GET", f"/v1/households/{theirs}"))["code"] == theirs
    assert (
        await community.get(f"/v1/households/{theirs}", headers=community.auth("grid_worker", "gw-9"))
    ).status_code == 200

    # Ending the assignment widens the view again (it was the only one).
    assignments = await eventually(lambda: community.events("assignment.changed.v1"), timeout=30, what="events")
    gw1 = next(e["data"]["assignment_id"] for e in assignments if e["data"]["person"] == "gw-1")
    await community.ok("POST", f"/v1/assignments/{gw1}/end")
    assert (await community.get(f"/v1/households/{theirs}", headers=gw)).status_code == 200
