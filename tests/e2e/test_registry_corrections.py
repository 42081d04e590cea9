"""Corrections and voids through the gateway: a record entered by mistake is corrected or voided by its author or a
community admin (others 403), with a reason; the history keeps both versions; events let copies elsewhere follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jinshui.kit.testing import eventually

from .test_registry_areas import PROBLEM
from .test_registry_residents import LI, ZHANG, arrival, registry, submit  # noqa: F401  (registry is a fixture)


async def _refused(registry, path: str, body: dict, status: int, role="grid_worker", sub="gw-1") -> dict:  # noqa: F811
    r = await registry.post(path, json=body, headers=registry.auth(role, sub))
    assert r.status_code == status and r.headers["content-type"] == PROBLEM, r.text
    return r.json()


async def test_a_visit_is_corrected_by_its_author_and_voided_by_an_admin_keeping_both_versions(registry):  # noqa: F811
    a, _ = registry.codes
    visited_at = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    body = {"visits": [{"household_code": a, "visited_at": visited_at, "people_present": 1}]}
    visit_id = (await submit(registry, "/v1/visits", body))["outcomes"][0]["ref"]
    fix = {"kind": "visit", "id": visit_id, "changes": {"people_present": 3}, "reason": "录错人数"}

    detail = (await _refused(registry, "/v1/corrections", fix, 403, sub="gw-2"))["detail"]
    assert detail == "only its author or a community admin may change this visit"
    bad = {**fix, "changes": {}}
    assert (await _refused(registry, "/v1/corrections", bad, 422))["errors"][0]["field"] == "body.changes"
    bad = {**fix, "changes": {"colour": "red"}}
    assert (await _refused(registry, "/v1/corrections", bad, 422))["errors"][0]["field"] == "body.changes.colour"
    bad = {**fix, "changes": {"visited_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()}}
    assert (await _refused(registry, "/v1/corrections", bad, 422))["errors"][0]["reason"] == "is in the future"
    assert (await _refused(registry, "/v1/corrections", {**fix, "id": "no-such"}, 404))["detail"] == "no visit no-such"
    nul = {"kind": "letting", "id": "a\x00b", "reason": "x"}
    assert "cannot be stored" in (await _refused(registry, "/v1/voids", nul, 422))["detail"]

    done = await registry.ok("POST", "/v1/corrections", json=fix, headers=registry.auth("grid_worker", "gw-1"))
    assert (done["before"], done["after"]) == ({"people_present": 1}, {"people_present": 3})
    [shown] = (await registry.ok("GET", f"/v1/households/{a}"))["visits"]
    assert shown["people_present"] == 3

    void = {"kind": "visit", "id": visit_id, "reason": "重复录入"}
    assert (await _refused(registry, "/v1/voids", void, 403, sub="gw-2"))["status"] == 403
    await registry.ok("POST", "/v1/voids", json=void)
    assert "was voided" in (await _refused(registry, "/v1/voids", void, 409, role="community_admin"))["detail"]
    assert "was voided" in (await _refused(registry, "/v1/corrections", fix, 409))["detail"]
    assert (await registry.ok("GET", f"/v1/households/{a}"))["visits"] == []
    coverage = await registry.ok("GET", "/v1/grids/G01/coverage")
    assert a in [h["code"] for h in coverage["not_visited"]], "a voided visit does not count"

    versions = (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    assert [(v["entity"], v["action"], v["actor"] == "gw-1") for v in versions[1:]] == [
        ("visit", "recorded", True),
        ("visit", "corrected", True),
        ("visit", "voided", False),
    ]
    corrected = versions[2]["data"]
    assert (corrected["before"], corrected["after"], corrected["reason"]) == (
        {"people_present": 1},
        {"people_present": 3},
        "录错人数",
    )

    async def events():
        found = [e for e in await registry.events(".v1") if ".record." in e["type"]]
        return found if len(found) == 2 else None

    c, v = await eventually(events, what="record.corrected and record.voided")
    assert c["type"].endswith("record.corrected.v1") and c["data"]["after"] == {"people_present": 3}
    assert v["type"].endswith("record.voided.v1") and (v["data"]["record_id"], v["data"]["grid"]) == (visit_id, "G01")


async def test_a_residency_entered_by_mistake_is_corrected_then_voided_and_the_person_may_arrive_again(registry):  # noqa: F811
    a, b = registry.codes
    came = await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(a, ZHANG, "张伟")]})
    residency_id = came["outcomes"][0]["ref"]
    gw1 = registry.auth("grid_worker", "gw-1")
    end = (datetime.now(UTC) + timedelta(days=90)).isoformat()
    fix = {
        "kind": "residency",
        "id": residency_id,
        "changes": {"kind": "tenant", "expected_end": end},
        "reason": "租户",
    }
    await registry.ok("POST", "/v1/corrections", json=fix, headers=gw1)
    [resident] = (await registry.ok("GET", f"/v1/households/{a}"))["residents"]
    assert resident["kind"] == "tenant" and resident["expected_end"].startswith(end[:10])

    departed = {**fix, "changes": {"departed_at": datetime.now(UTC).isoformat()}}
    reason = (await _refused(registry, "/v1/corrections", departed, 422))["errors"][0]["reason"]
    assert reason == "the residency is open: submit a departure instead"
    early = {**fix, "changes": {"expected_end": "2000-01-01T00:00:00Z"}}
    assert (await _refused(registry, "/v1/corrections", early, 422))["errors"][0][
        "field"
    ] == "body.changes.expected_end"

    await registry.ok(
        "POST", "/v1/voids", json={"kind": "residency", "id": residency_id, "reason": "登错户"}, headers=gw1
    )
    assert (await registry.ok("GET", f"/v1/households/{a}"))["residents"] == []
    person = await registry.ok("GET", f"/v1/persons/{resident['person_id']}", role="police")
    assert person["residencies"] == [], "a voided stay is no longer shown"
    again = await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(b, ZHANG, "张伟")]})
    assert again["status"] == "applied", "the voided stay no longer holds the person"
    versions = (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    assert [(v["entity"], v["action"]) for v in versions[1:]] == [
        ("residency", "arrived"),
        ("residency", "corrected"),
        ("residency", "voided"),
    ]


async def test_person_details_are_corrected_with_the_phone_protected_and_a_tag_voided_ends_it(registry):  # noqa: F811
    a, _ = registry.codes
    await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(a, LI, "李哪")]})
    [li] = (await registry.ok("GET", f"/v1/households/{a}"))["residents"]
    fix = {
        "kind": "person",
        "id": li["person_id"],
        "changes": {"name": "李娜", "phone": "13912345678"},
        "reason": "错字",
    }
    assert (await _refused(registry, "/v1/corrections", fix, 403, sub="gw-2"))["status"] == 403
    bad = {**fix, "changes": {"phone": "12345"}}
    assert (await _refused(registry, "/v1/corrections", bad, 422, role="community_admin"))["errors"][0]["field"] == (
        "body.changes.phone"
    )
    done = await registry.ok("POST", "/v1/corrections", json=fix, headers=registry.auth("grid_worker", "gw-1"))
    assert done["after"]["name"] == "李娜" and "phone" not in done["after"] and done["after"]["phone_hash"]
    [li] = (await registry.ok("GET", f"/v1/households/{a}"))["residents"]
    assert (li["name"], li["phone"]) == ("李娜", "139****5678")

    tag = {"tag": "disabled", "person": {"id_number": LI}, "since": "2020-03-01", "reason": "x"}
    tag_id = (await submit(registry, "/v1/tags", {"tags": [tag]}))["outcomes"][0]["ref"]
    await registry.ok("POST", "/v1/voids", json={"kind": "tag", "id": tag_id, "reason": "标错人"})
    assert (await registry.ok("GET", f"/v1/households/{a}"))["residents"][0]["tags"] == []

    async def ended():
        return [e for e in await registry.events("tag.ended.v1") if e["data"]["tag_id"] == tag_id]

    [e] = await eventually(ended, what="tag.ended for the voided tag, so risk's copy ends")
    assert e["data"]["reason"] == "voided: 标错人"
    for _subject, data in await registry.stream_messages("REGISTRY"):
        assert b"13912345678" not in data


async def test_a_letting_correction_that_would_end_it_before_it_starts_is_refused(registry):  # noqa: F811
    a, _ = registry.codes
    await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(a, LI, "李娜", kind="tenant")]})
    letting = {"household_code": a, "landlord": "王建國", "tenants": [{"id_number": LI}], "starts_on": "2026-03-01"}
    letting_id = (await submit(registry, "/v1/lettings", {"lettings": [letting]}))["outcomes"][0]["ref"]
    gw1 = registry.auth("grid_worker", "gw-1")
    early = {"kind": "letting", "id": letting_id, "changes": {"expected_end": "2026-02-01"}, "reason": "x"}
    error = (await _refused(registry, "/v1/corrections", early, 422))["errors"][0]
    assert error == {"field": "body.changes.expected_end", "reason": "the letting would end before it starts"}
    empty = {**early, "changes": {"landlord": None}}
    assert (await _refused(registry, "/v1/corrections", empty, 422))["errors"][0]["reason"] == "may not be emptied"
    fix = {**early, "changes": {"landlord": "王建国", "expected_end": "2027-02-28"}, "reason": "繁体字"}
    await registry.ok("POST", "/v1/corrections", json=fix, headers=gw1)
    [shown] = (await registry.ok("GET", f"/v1/households/{a}"))["lettings"]
    assert (shown["landlord"], shown["expected_end"]) == ("王建国", "2027-02-28")
