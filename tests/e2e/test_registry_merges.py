"""Deaths, person merges, household splits and merges through the gateway: each applied whole with its events and
versions in the history, or refused with the reason and nothing applied."""

from __future__ import annotations

from datetime import date, timedelta

from jinshui.kit.testing import eventually

from .test_registry_areas import PROBLEM
from .test_registry_residents import LI, ZHANG, arrival, at, registry, submit  # noqa: F401  (registry is a fixture)


async def _refused(registry, method: str, path: str, body: dict, status: int, role="community_admin") -> dict:  # noqa: F811
    r = await registry.request(method, path, json=body, headers=registry.auth(role))
    assert r.status_code == status and r.headers["content-type"] == PROBLEM, r.text
    return r.json()


async def _events(registry, suffix: str, count: int) -> list[dict]:  # noqa: F811
    async def found():
        events = await registry.events(suffix)
        return events if len(events) >= count else None

    return await eventually(found, what=f"{count} {suffix}")


async def test_a_death_closes_the_residency_ends_the_tags_and_is_recorded_once(registry):  # noqa: F811
    a, _ = registry.codes
    await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(a, ZHANG, "张伟")]})
    tag = {"tag": "elderly_alone", "person": {"id_number": ZHANG}, "since": "2024-01-01", "reason": "独居"}
    await submit(registry, "/v1/tags", {"tags": [tag]})
    [zhang] = (await registry.ok("GET", f"/v1/households/{a}"))["residents"]
    path = f"/v1/persons/{zhang['person_id']}/death"
    tomorrow = (date.today() + timedelta(days=2)).isoformat()
    assert (await _refused(registry, "POST", path, {"died_on": tomorrow, "reason": "x"}, 422))["errors"][0][
        "field"
    ] == "body.died_on"
    long_ago = {"died_on": "2000-01-01", "reason": "x"}
    assert "before the person's arrival" in (await _refused(registry, "POST", path, long_ago, 422))["detail"]
    assert (await registry.ok("GET", f"/v1/households/{a}"))["residents"], "a refused death changes nothing"

    died = await registry.ok(
        "POST", path, role="grid_worker", json={"died_on": date.today().isoformat(), "reason": "病故"}
    )
    assert died["residencies_closed"] and len(died["tags_ended"]) == 1
    assert (await registry.ok("GET", f"/v1/households/{a}"))["residents"] == []
    person = await registry.ok("GET", f"/v1/persons/{zhang['person_id']}", role="police")
    assert person["died_on"] == date.today().isoformat() and person["residencies"][0]["departure_reason"] == "death"
    assert (
        "already recorded"
        in (await _refused(registry, "POST", path, {"died_on": "2026-01-01", "reason": "x"}, 409))["detail"]
    )
    again = await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(a, ZHANG, "张伟")]})
    assert again["outcomes"][0]["reason"].startswith("the person's death was recorded")

    [departed] = await _events(registry, "resident.departed.v1", 1)
    assert departed["data"]["reason"] == "death"
    [event] = await _events(registry, "person.died.v1", 1)
    assert event["data"]["residencies_closed"] == died["residencies_closed"] and ZHANG not in str(event)


async def test_two_person_records_found_to_be_one_are_merged_keeping_both_histories(registry):  # noqa: F811
    a, b = registry.codes
    both = {"arrivals": [arrival(a, ZHANG, "张伟"), arrival(b, LI, "张伟")]}
    await submit(registry, "/v1/residents/arrivals", both)
    keep = (await registry.ok("GET", f"/v1/households/{a}"))["residents"][0]["person_id"]
    dup = (await registry.ok("GET", f"/v1/households/{b}"))["residents"][0]["person_id"]
    await submit(
        registry,
        "/v1/tags",
        {"tags": [{"tag": "disabled", "person": {"person_id": dup}, "since": "2020-01-01", "reason": "x"}]},
    )
    met = [{"household_code": b, "visited_at": at(1), "persons_present": [dup, "nobody"]}]
    outcome = (await submit(registry, "/v1/visits", {"visits": met}))["outcomes"][0]
    assert outcome["reason"] == "persons_present[1] is not a registered person"
    met[0]["persons_present"] = [dup]
    visit_id = (await submit(registry, "/v1/visits", {"visits": met}))["outcomes"][0]["ref"]
    body = {"keep": keep, "merge": dup, "reason": "同一人，身份证号录错"}

    assert (await _refused(registry, "POST", "/v1/persons/merge", body, 403, role="grid_worker"))["status"] == 403
    same = {**body, "merge": keep}
    assert (await _refused(registry, "POST", "/v1/persons/merge", same, 422))["errors"][0]["field"] == "body.merge"
    detail = (await _refused(registry, "POST", "/v1/persons/merge", body, 409))["detail"]
    assert detail == f"both records are resident, in {a} and {b}: record the departure of one first"

    leave = {"household_code": b, "person": {"person_id": dup}, "departed_at": at(2)}
    assert (await submit(registry, "/v1/residents/departures", {"departures": [leave]}))["status"] == "applied"
    merged = await registry.ok("POST", "/v1/persons/merge", json=body)
    assert len(merged["residencies"]) == 1 and len(merged["tags"]) == 1
    assert merged["visits"] == [visit_id]
    [visit] = (await registry.ok("GET", f"/v1/households/{b}"))["visits"]
    assert visit["persons_present"] == [keep], "the people a visit met move to the kept record"
    assert "already merged" in (await _refused(registry, "POST", "/v1/persons/merge", body, 409))["detail"]

    kept = await registry.ok("GET", f"/v1/persons/{keep}", role="police")
    assert sorted(s["household_code"] for s in kept["residencies"]) == sorted([a, b])
    assert [t["tag"] for t in kept["tags"]] == ["disabled"]
    gone = await registry.ok("GET", f"/v1/persons/{dup}", role="community_admin")
    assert gone["merged_into"] == keep
    found = await registry.ok("POST", "/v1/persons/search", role="police", json={"name_prefix": "张伟"})
    assert [p["person_id"] for p in found["persons"]] == [keep], "search finds the one record"
    for code in (a, b):
        versions = (await registry.ok("GET", f"/v1/households/{code}/history"))["versions"]
        assert (versions[-1]["entity"], versions[-1]["action"], versions[-1]["data"]["kept"]) == (
            "person",
            "merged",
            keep,
        )
    [event] = await _events(registry, "person.merged.v1", 1)
    assert (event["data"]["kept"], event["data"]["merged"]) == (keep, dup) and LI not in str(event)
    # A submission naming the merged record (by its ID number) reaches the kept one.
    leave = {"household_code": a, "person": {"id_number": LI}, "departed_at": at(1)}
    assert (await submit(registry, "/v1/residents/departures", {"departures": [leave]}))["status"] == "applied"
    assert (await registry.ok("GET", f"/v1/households/{a}"))["residents"] == []


async def test_a_household_splits_and_two_found_to_be_one_merge_keeping_their_history(registry):  # noqa: F811
    a, _ = registry.codes
    family = {"arrivals": [arrival(a, ZHANG, "张伟", kind="permanent"), arrival(a, LI, "李娜", kind="permanent")]}
    await submit(registry, "/v1/residents/arrivals", family)
    residents = {r["name"]: r["person_id"] for r in (await registry.ok("GET", f"/v1/households/{a}"))["residents"]}
    grids = {g["code"]: g["households"] for g in (await registry.ok("GET", "/v1/grids"))["grids"]}

    stranger = {"persons": [residents["李娜"], "no-such-person"], "reason": "分户"}
    error = (await _refused(registry, "POST", f"/v1/households/{a}/split", stranger, 422, role="grid_worker"))[
        "errors"
    ][0]
    assert error["field"] == "body.persons[1]" and error["reason"] == f"the person is not resident in household {a}"
    after = {g["code"]: g["households"] for g in (await registry.ok("GET", "/v1/grids"))["grids"]}
    assert after == grids, "a refused split registers no household"

    split = {"persons": [residents["李娜"]], "address": "金水小区1号楼1单元102", "reason": "子女成家分户"}
    made = await registry.ok("POST", f"/v1/households/{a}/split", role="grid_worker", json=split, status=201)
    new = made["household"]["code"]
    assert made["household"]["grid"] == "G01" and made["household"]["beat"] == "B1"
    assert [r["name"] for r in (await registry.ok("GET", f"/v1/households/{a}"))["residents"]] == ["张伟"]
    moved = (await registry.ok("GET", f"/v1/households/{new}"))["residents"]
    assert [(r["name"], r["kind"]) for r in moved] == [("李娜", "permanent")]
    for code in (a, new):
        versions = (await registry.ok("GET", f"/v1/households/{code}/history"))["versions"]
        assert ("household", "split") in [(v["entity"], v["action"]) for v in versions]

    merge = {"keep": a, "merge": new, "reason": "同一户重复登记"}
    assert (await _refused(registry, "POST", "/v1/households/merge", merge, 403, role="grid_worker"))["status"] == 403
    unknown = {**merge, "merge": "NOSUCH"}
    assert (await _refused(registry, "POST", "/v1/households/merge", unknown, 422))["errors"][0][
        "field"
    ] == "body.merge"
    done = await registry.ok("POST", "/v1/households/merge", json=merge)
    assert done["persons"] == [residents["李娜"]]
    assert "already merged" in (await _refused(registry, "POST", "/v1/households/merge", merge, 409))["detail"]
    card = await registry.ok("GET", f"/v1/households/{a}")
    assert sorted(r["name"] for r in card["residents"]) == ["张伟", "李娜"]
    old = await registry.ok("GET", f"/v1/households/{new}")
    assert old["merged_into"] == a and old["residents"] == []
    versions = [
        (v["entity"], v["action"]) for v in (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    ]
    assert versions.count(("household", "merged")) == 2, "the kept file shows the merged one's story too"
    assert ("household", "registered") in versions and versions.count(("household", "split")) == 2

    [split_event] = await _events(registry, "household.split.v1", 1)
    assert (split_event["data"]["from_household"], split_event["data"]["new_household"]) == (a, new)
    [merge_event] = await _events(registry, "household.merged.v1", 1)
    assert (merge_event["data"]["kept"], merge_event["data"]["merged"]) == (a, new)
    visit = {"visits": [{"household_code": new, "visited_at": at(0)}]}
    outcome = (await submit(registry, "/v1/visits", visit))["outcomes"][0]
    assert outcome["reason"] == f"household {new} was merged into {a}: visit that one"
