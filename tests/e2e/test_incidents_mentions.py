"""Persons named only by name: listed as unresolved mentions, linked by hand to an ID number sealed at the gateway;
linking a tagged person to a police call raises rule 1's HIGH alert."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest_asyncio

from jinshui.kit.testing import eventually, id_number
from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"
ZHANG = id_number("37050219780415123")


class Desk:
    def __init__(self, stack, env) -> None:
        self.home = env["JINSHUI_HOME"]
        self.http = httpx.AsyncClient(base_url=stack.url("gateway"), timeout=30)

    def auth(self, role: str, sub: str | None = None, **extra) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}", **extra}

    async def ok(self, path: str, body: dict, headers: dict, status: int = 201) -> dict:
        r = await self.http.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text
        return r.json()

    async def settled(self, path: str, body: dict, role: str, sub: str) -> dict:
        headers = self.auth(role, sub, Prefer="wait=25", **{"Idempotency-Key": str(uuid.uuid4())})
        state = await self.ok(path, body, headers, 200)
        assert state["status"] == "applied", state
        return state

    async def police_call(self, call_id: str, persons: list[dict], household: str) -> str:
        call = {
            "call_id": call_id,
            "received_at": datetime.now(UTC).isoformat(),
            "category": "dispute",
            "household_code": household,
            "description": "邻里纠纷",
            "persons": persons,
        }
        state = await self.settled("/v1/police-calls", {"calls": [call]}, "police_platform", "police-platform")
        return state["outcomes"][0]["ref"]

    async def incident(self, incident_id: str) -> dict:
        r = await self.http.get(f"/v1/incidents/{incident_id}", headers=self.auth("mediator"))
        assert r.status_code == 200, r.text
        return r.json()

    async def mentions(self, role: str = "mediator", sub: str | None = None, **params) -> dict:
        r = await self.http.get("/v1/mentions/unresolved", params=params, headers=self.auth(role, sub))
        assert r.status_code == 200, r.text
        return r.json()

    async def link(self, incident_id: str, source_id: str, index, id_no: str, role: str = "police"):
        return await self.http.post(
            f"/v1/incidents/{incident_id}/sources/{source_id}/persons/{index}/link",
            json={"id_number": id_no, "reason": "身份经现场核实"},
            headers=self.auth(role, "officer-7"),
        )


@pytest_asyncio.fixture
async def desk(stack, service_env):
    d = Desk(await stack(), service_env)
    admin = d.auth("community_admin")
    await d.ok("/v1/beats", {"code": "B1", "name": "金水警格"}, admin)
    await d.ok("/v1/grids", {"code": "G03", "name": "第三网格", "beat": "B1"}, admin)
    d.household = (await d.ok("/v1/households", {"address": "金水小区3-2-501", "grid": "G03"}, admin))["code"]
    yield d
    await d.http.aclose()


def problem(r: httpx.Response, status: int, field: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert field in [e["field"] for e in r.json().get("errors", [])], r.json()
    return r.json()


async def test_linking_a_name_only_mention_to_a_tagged_person_raises_the_high_alert(desk):
    d = desk
    arrival = {
        "household_code": d.household,
        "person": {"name": "张三", "id_number": ZHANG},
        "kind": "permanent",
        "arrived_at": (datetime.now(UTC) - timedelta(days=400)).isoformat(),
    }
    await d.settled("/v1/residents/arrivals", {"arrivals": [arrival]}, "community_admin", "admin-1")
    tag = {
        "tag": "unstable_person",
        "person": {"id_number": ZHANG},
        "since": str(date.today() - timedelta(days=30)),
        "reason": "repeated threats against neighbours",
    }
    await d.settled("/v1/tags", {"tags": [tag]}, "community_admin", "admin-1")
    incident_id = await d.police_call("110-M-0001", [{"name": "张三", "role": "party"}, {"name": "李四"}], d.household)

    first = await d.mentions(limit=1)
    assert [(m["name"], m["index"], m["incident_id"]) for m in first["items"]] == [("张三", 0, incident_id)]
    mention = first["items"][0]
    assert mention["household_code"] == d.household and mention["origin"] == "police_call"
    assert mention["external_id"] == "110-M-0001" and mention["grid"] == "G03" and mention["beat"] == "B1"
    rest = await d.mentions(limit=1, cursor=first["next_cursor"])
    assert [(m["name"], m["index"]) for m in rest["items"]] == [("李四", 1)] and rest["next_cursor"] is None

    r = await d.link(incident_id, mention["source_id"], 0, ZHANG)
    assert r.status_code == 200, r.text
    linked = r.json()
    assert linked["resolved"] and linked["name"] == "张三" and linked["linked_by"] == "officer-7"
    assert linked["id_masked"] != ZHANG and ZHANG not in r.text

    async def alerts():
        r = await d.http.get("/v1/alerts", headers=d.auth("police"))
        assert r.status_code == 200, r.text
        return [a for a in r.json()["alerts"] if a["rule"] == "tagged-person-police-call"]

    alert = (await eventually(alerts, timeout=40, what="rule 1's HIGH alert after the link"))[0]
    assert alert["level"] == "HIGH" and alert["household_code"] == d.household and alert["beat"] == "B1"
    assert "110-M-0001" in alert["explanation"]

    assert [m["name"] for m in (await d.mentions())["items"]] == ["李四"]
    incident = await d.incident(incident_id)
    persons = incident["sources"][0]["persons"]
    assert persons[0]["resolved"] and persons[0]["id_masked"] == linked["id_masked"]
    assert not persons[1]["resolved"]
    assert [t["what"] for t in incident["timeline"]].count("person_linked") == 1
    assert ZHANG not in str(incident)


async def test_bad_links_are_refused_naming_the_field_and_change_nothing(desk):
    d = desk
    other = id_number("37050219850101456")
    incident_id = await d.police_call("110-M-0002", [{"name": "王五"}, {"id_number": other}], d.household)
    source_id = (await d.mentions())["items"][0]["source_id"]

    bad = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    problem(await d.link(incident_id, source_id, 0, bad), 422, "body.id_number")
    problem(await d.link(incident_id, source_id, 2, ZHANG), 422, "path.index")
    problem(await d.link(incident_id, source_id, 1, ZHANG), 409, "path.index")  # already by ID number
    r = await d.link(incident_id, "no-such-source", 0, ZHANG)
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    forbidden = await d.link(incident_id, source_id, 0, ZHANG, role="grid_worker")
    assert forbidden.status_code == 403
    assert [m["name"] for m in (await d.mentions())["items"]] == ["王五"], "nothing applied"

    assert (await d.link(incident_id, source_id, 0, ZHANG)).status_code == 200
    problem(await d.link(incident_id, source_id, 0, ZHANG), 409, "path.index")  # linking twice
    assert (await d.mentions())["items"] == []
    incident = await d.incident(incident_id)
    assert [t["what"] for t in incident["timeline"]].count("person_linked") == 1


async def test_the_unresolved_list_is_scoped_like_the_incident_list(desk):
    d = desk
    admin = d.auth("community_admin")
    await d.ok("/v1/beats", {"code": "B2", "name": "另一警格"}, admin)
    await d.ok("/v1/assignments", {"person": "officer-b2", "role": "officer", "area": "B2"}, admin)
    await d.ok("/v1/assignments", {"person": "officer-b1", "role": "officer", "area": "B1"}, admin)
    await d.police_call("110-M-0003", [{"name": "赵六"}], d.household)

    async def seen_by(sub: str):
        return [m["name"] for m in (await d.mentions("police", sub))["items"]]

    assert await eventually(lambda: seen_by("officer-b1"), what="the B1 officer sees it") == ["赵六"]
    assert await eventually(lambda: _empty(seen_by("officer-b2")), what="the B2 officer's scope") == "empty"


async def _empty(names) -> str | None:
    return "empty" if await names == [] else None
