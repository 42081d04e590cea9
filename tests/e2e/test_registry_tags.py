"""Tags (标签化管理) through the gateway: set and ended in the field, self-sufficient events for risk's copy,
sensitive tags shown only to police and community admins; a tag whose `until` passes ends by itself."""

from __future__ import annotations

from datetime import date, timedelta

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .test_registry_residents import LI, ZHANG, arrival, registry, submit  # noqa: F401  (registry is a fixture)


async def test_tags_are_set_ended_and_shown_by_role(registry):  # noqa: F811
    a, b = registry.codes
    people = {"arrivals": [arrival(a, ZHANG, "张伟"), arrival(a, LI, "李娜", kind="permanent")]}
    assert (await submit(registry, "/v1/residents/arrivals", people))["status"] == "applied"
    today = date.today()
    tags = [
        {"tag": "unstable_person", "person": {"id_number": ZHANG}, "since": "2026-01-05", "reason": "多次上访"},
        {"tag": "disabled", "person": {"id_number": LI}, "since": "2020-03-01", "reason": "肢体二级"},
        {"tag": "family_in_difficulty", "household_code": a, "since": "2025-06-01", "reason": "低保户"},
        {"tag": "elderly_alone", "household_code": b, "since": "2025-06-01", "reason": "x"},
        {"tag": "no_such_tag", "household_code": a, "since": "2025-06-01", "reason": "x"},
        {"tag": "disabled", "person": {"id_number": LI}, "since": "2021-01-01", "reason": "again"},
    ]
    result = await submit(registry, "/v1/tags", {"tags": tags}, role="police")
    assert [o["status"] for o in result["outcomes"]] == ["applied"] * 4 + ["rejected"] * 2
    assert result["outcomes"][4]["reason"].startswith("unknown tag no_such_tag")
    assert result["outcomes"][5]["reason"] == "already tagged disabled since 2020-03-01: end that tag first"
    unstable_id = result["outcomes"][0]["ref"]

    r = await registry.post(
        "/v1/tags",
        json={"tags": [{"tag": "disabled", "household_code": a, "since": "2026-01-02", "until": "2026-01-01"}]},
        headers=registry.auth("grid_worker"),
    )
    assert r.status_code == 422, "no reason and an until before since are refused at the door"

    async def card(role: str) -> dict:
        c = await registry.ok("GET", f"/v1/households/{a}", role=role)
        return {
            "household": [t["tag"] for t in c["tags"]],
            **{p["name"]: [t["tag"] for t in p["tags"]] for p in c["residents"]},
        }

    full = {"household": ["family_in_difficulty"], "张伟": ["unstable_person"], "李娜": ["disabled"]}
    assert await card("police") == full and await card("community_admin") == full
    masked = {**full, "张伟": []}
    assert await card("mediator") == masked and await card("grid_worker") == masked
    zhang = (await registry.ok("GET", f"/v1/households/{a}", role="police"))["residents"][0]
    assert zhang["name"] == "张伟"
    [shown] = zhang["tags"]
    assert shown["sensitive"] and shown["reason"] == "多次上访" and shown["set_by"] == "gw-1"
    person = await registry.ok("GET", f"/v1/persons/{zhang['person_id']}", role="grid_worker")
    assert person["tags"] == []
    person = await registry.ok("GET", f"/v1/persons/{zhang['person_id']}", role="police")
    assert [t["tag"] for t in person["tags"]] == ["unstable_person"]

    # Risk builds its copy from the events alone: who (id and keyed hash), where (household, grid, beat), what.
    [set_] = [e for e in await registry.events("tag.set.v1") if e["data"]["tag"] == "unstable_person"]
    data = set_["data"]
    assert data["person_id"] == zhang["person_id"] and data["id_hash"] and data["sensitive"] is True
    assert (data["household_code"], data["grid"], data["beat"]) == (a, "G01", "B1")
    assert ZHANG not in str(set_)

    ended = await submit(
        registry, "/v1/tags/end", {"tags": [{"tag_id": unstable_id, "ended_on": "2026-02-01", "reason": "销号"}]}
    )
    assert ended["status"] == "applied"
    again = await submit(
        registry, "/v1/tags/end", {"tags": [{"tag_id": unstable_id, "ended_on": "2026-02-02", "reason": "x"}]}
    )
    assert again["outcomes"][0]["reason"] == "the tag already ended on 2026-02-01"
    assert (await card("police"))["张伟"] == []
    [end] = await registry.events("tag.ended.v1")
    assert end["data"]["tag_id"] == unstable_id and end["data"]["person_id"] == zhang["person_id"]
    assert end["data"]["grid"] == "G01" and end["data"]["sensitive"] is True

    # A tag with an `until` ends by itself once that day is over (Asia/Shanghai), by the service's clock.
    until = today + timedelta(days=3)
    short = {"tag": "elderly_alone", "household_code": a, "since": today.isoformat(), "until": until.isoformat()}
    short["reason"] = "子女暂时外出"
    assert (await submit(registry, "/v1/tags", {"tags": [short]}))["status"] == "applied"
    assert "elderly_alone" in (await card("grid_worker"))["household"]
    advance(registry.clock_file, 5 * 86400)

    async def lapsed():
        return [e for e in await registry.events("tag.ended.v1") if e["data"]["ended_by"] == "registry"]

    [lapse] = await eventually(lapsed, timeout=60, what="the tag ended when its until passed")
    assert lapse["data"]["ended_on"] == until.isoformat() and lapse["data"]["reason"] == "until passed"
    assert "elderly_alone" not in (await card("grid_worker"))["household"]


async def test_configured_tag_kinds(registry):  # noqa: F811
    a, _ = registry.codes
    kinds = {
        k["code"]: k["sensitive"] for k in (await registry.ok("GET", "/v1/tag-kinds", role="grid_worker"))["tag_kinds"]
    }
    assert kinds == {
        "disabled": False,
        "family_in_difficulty": False,
        "elderly_alone": False,
        "mental_illness": True,
        "unstable_person": True,
        "community_correction": True,
    }
    r = await registry.post(
        "/v1/tag-kinds", json={"code": "drug_user", "label": "吸毒人员"}, headers=registry.auth("grid_worker")
    )
    assert r.status_code == 403
    await registry.ok(
        "POST", "/v1/tag-kinds", json={"code": "drug_user", "label": "吸毒人员", "sensitive": True}, status=201
    )
    await registry.ok("POST", "/v1/tag-kinds", json={"code": "veteran", "label": "退役军人"}, status=201)
    tags = [
        {"tag": "drug_user", "household_code": a, "since": "2026-01-01", "reason": "x"},
        {"tag": "veteran", "household_code": a, "since": "2026-01-01", "reason": "y"},
    ]
    assert (await submit(registry, "/v1/tags", {"tags": tags}))["status"] == "applied"
    shown = await registry.ok("GET", f"/v1/households/{a}", role="mediator")
    assert [t["tag"] for t in shown["tags"]] == ["veteran"]
    shown = await registry.ok("GET", f"/v1/households/{a}", role="police")
    assert sorted(t["tag"] for t in shown["tags"]) == ["drug_user", "veteran"]
