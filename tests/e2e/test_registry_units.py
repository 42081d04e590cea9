"""Units (实有单位) through the gateway: registered at a household's house or at their own address, the operator's
ID number and phone protected like a person's, shown on the household card and listed by grid; events on REGISTRY."""

from __future__ import annotations

from jinshui.kit.testing import eventually

from .test_registry_areas import PROBLEM
from .test_registry_residents import ZHANG, ZHANG_PHONE, registry  # noqa: F401  (registry is a fixture)


async def test_units_at_a_house_and_at_their_own_address(registry):  # noqa: F811
    a, b = registry.codes
    restaurant = {
        "name": "老张面馆",
        "category": "restaurant",
        "licence_number": "JY13701020012345",
        "household_code": a,
        "operator": {"name": "张伟", "id_number": ZHANG, "phone": ZHANG_PHONE},
    }
    made = await registry.ok("POST", "/v1/units", role="grid_worker", json=restaurant, status=201)
    assert made["operator"] == {"name": "张伟", "id_number": "370502********" + ZHANG[-4:], "phone": "138****5678"}
    assert (made["household_code"], made["grid"], made["beat"]) == (a, "G01", "B1")
    stall = {"name": "金水市场12号摊位", "category": "market_stall", "address": "金水市场A区12号", "grid": "G02"}
    market = await registry.ok("POST", "/v1/units", json=stall, status=201)
    assert (market["household_code"], market["address"], market["beat"]) == (None, "金水市场A区12号", "B1")

    async def refused_at(path: str, body: dict, status: int) -> dict:
        r = await registry.post(path, json=body, headers=registry.auth("community_admin"))
        assert r.status_code == status and r.headers["content-type"] == PROBLEM, r.text
        return r.json()

    async def refused(body: dict, status: int = 422) -> dict:
        r = await registry.post("/v1/units", json=body, headers=registry.auth("community_admin"))
        assert r.status_code == status and r.headers["content-type"] == PROBLEM, r.text
        return r.json()

    assert "already registered" in (await refused({**restaurant, "name": "另一家"}, 409))["detail"]
    bad_id = {**restaurant, "licence_number": None, "operator": {"name": "王五", "id_number": ZHANG[:-1] + "X"}}
    [error] = (await refused(bad_id))["errors"]
    assert error["field"] == "body.operator.id_number" and "check digit" in error["reason"]
    assert "unknown grid G99" in (await refused({**stall, "grid": "G99"}))["detail"]
    assert "household_code or address" in (await refused({"name": "x", "category": "shop"}))["detail"]
    assert "not registered" in (await refused({"name": "x", "category": "shop", "household_code": "NOSUCH1"}))["detail"]

    card = await registry.ok("GET", f"/v1/households/{a}", role="police")
    assert [(u["name"], u["category"], u["licence_number"]) for u in card["units"]] == [
        ("老张面馆", "restaurant", "JY13701020012345")
    ]
    assert (await registry.ok("GET", f"/v1/households/{b}"))["units"] == []
    by_grid = await registry.ok("GET", "/v1/units?grid=G02", role="police")
    assert [u["unit_id"] for u in by_grid["units"]] == [market["unit_id"]]
    at_a = await registry.ok("GET", f"/v1/units?household_code={a}", role="grid_worker")
    assert [u["unit_id"] for u in at_a["units"]] == [made["unit_id"]]
    versions = (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    assert (versions[-1]["entity"], versions[-1]["action"], versions[-1]["entity_id"]) == (
        "unit",
        "registered",
        made["unit_id"],
    )

    fix = {"kind": "unit", "id": made["unit_id"], "changes": {"licence_number": "JY13701020054321"}, "reason": "抄错"}
    r = await registry.post("/v1/corrections", json=fix, headers=registry.auth("grid_worker", "gw-2"))
    assert r.status_code == 403, "only the unit's author or a community admin"
    taken = {**fix, "id": market["unit_id"], "changes": {"licence_number": "JY13701020012345"}}
    assert "another unit has licence" in (await refused_at("/v1/corrections", taken, 409))["detail"]
    await registry.ok("POST", "/v1/corrections", json=fix, headers=registry.auth("grid_worker"))
    [shown] = (await registry.ok("GET", f"/v1/households/{a}"))["units"]
    assert shown["licence_number"] == "JY13701020054321"
    await registry.ok("POST", "/v1/voids", json={"kind": "unit", "id": market["unit_id"], "reason": "摊位不存在"})
    assert (await registry.ok("GET", "/v1/units?grid=G02"))["units"] == []

    events = await eventually(lambda: _two(registry), what="two unit.registered events")
    assert [e["data"]["unit_id"] for e in events] == [made["unit_id"], market["unit_id"]]
    assert events[0]["data"]["operator_id_hash"] and events[1]["data"]["operator_id_hash"] is None
    for _subject, data in await registry.stream_messages("REGISTRY"):
        assert ZHANG.encode() not in data and ZHANG_PHONE.encode() not in data


async def _two(registry):  # noqa: F811
    events = await registry.events("unit.registered.v1")
    return events if len(events) == 2 else None
