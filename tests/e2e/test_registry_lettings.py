"""Lettings (租有登记，停有核销): registered while let; stopping writes the letting off, says so by event, and marks
its tenants' residencies for a departure check."""

from __future__ import annotations

from .test_registry_areas import PROBLEM
from .test_registry_residents import LI, arrival, registry, submit  # noqa: F401  (registry is a fixture)


async def test_a_stopped_letting_is_written_off_and_its_tenants_marked_for_a_departure_check(registry):  # noqa: F811
    a, _ = registry.codes
    tenant = {"arrivals": [arrival(a, LI, "李娜", kind="tenant")]}
    assert (await submit(registry, "/v1/residents/arrivals", tenant))["status"] == "applied"
    letting = {
        "household_code": a,
        "landlord": "王建国",
        "tenants": [{"id_number": LI}],
        "starts_on": "2026-03-01",
        "expected_end": "2026-02-01",
    }
    r = await registry.post("/v1/lettings", json={"lettings": [letting]}, headers=registry.auth("grid_worker"))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "ends before it starts" in r.json()["detail"]

    letting["expected_end"] = "2027-02-28"
    registered = await submit(registry, "/v1/lettings", {"lettings": [letting]})
    assert registered["status"] == "applied"
    letting_id = registered["outcomes"][0]["ref"]
    card = await registry.ok("GET", f"/v1/households/{a}", role="police")
    assert [(x["letting_id"], x["landlord"], x["stopped_on"]) for x in card["lettings"]] == [
        (letting_id, "王建国", None)
    ]
    assert card["residents"][0]["departure_check"] is False

    stop = {"stopped_on": "2026-09-30", "reason": "合同到期"}
    assert (await submit(registry, f"/v1/lettings/{letting_id}/stop", stop))["status"] == "applied"
    again = await submit(registry, f"/v1/lettings/{letting_id}/stop", stop)
    assert again["outcomes"][0]["reason"] == "the letting was already written off on 2026-09-30"

    card = await registry.ok("GET", f"/v1/households/{a}", role="police")
    assert card["lettings"][0]["stopped_on"] == "2026-09-30"
    tenant = card["residents"][0]
    assert tenant["departure_check"] is True
    [stopped] = await registry.events("letting.stopped.v1")
    assert stopped["data"]["departure_checks"] == [tenant["person_id"]] and stopped["data"]["beat"] == "B1"
    versions = (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    assert [(v["entity"], v["action"]) for v in versions][-2:] == [("letting", "registered"), ("letting", "stopped")]
