"""Police calls and grid reports meet in one incident stream: intake, correlation into joint incidents, reads."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest_asyncio

from jinshui.kit.pii import id_number_check_digit
from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"
SERVICES = ("registry", "incidents", "gateway")


def id_number(serial: int) -> str:
    first17 = f"37050219800101{serial:03d}"
    return first17 + id_number_check_digit(first17)


def ago(**delta) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


class Desk:
    """The gateway's public API as the police platform, grid workers and mediators use it."""

    def __init__(self, base: str, home: str) -> None:
        self.home = home
        self.http = httpx.AsyncClient(base_url=base, timeout=30)

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    async def household(self, code: str, address: str, *, grid: str = "G01", beat: str = "B1") -> None:
        body = {"code": code, "address": address, "grid": grid, "beat": beat}
        r = await self.http.post("/v1/households", json=body, headers=self.auth("community_admin"))
        assert r.status_code == 201, r.text

    async def _submit(self, path: str, key: str, records: list[dict], role: str, sub: str) -> dict:
        headers = {**self.auth(role, sub), "Idempotency-Key": str(uuid.uuid4())}
        r = await self.http.post(path, json={key: records}, headers=headers)
        assert r.status_code == 202, r.text
        sid = r.json()["submission_id"]

        async def settled():
            s = await self.http.get(f"/v1/submissions/{sid}", headers=self.auth(role, sub))
            assert s.status_code == 200, s.text
            return s.json() if s.json()["status"] != "received" else None

        return await eventually(settled, timeout=90, interval=0.2, what=f"submission {sid} settled")

    async def police_calls(self, *calls: dict) -> dict:
        return await self._submit("/v1/police-calls", "calls", list(calls), "police_platform", "police-platform")

    async def reports(self, *reports: dict, sub: str = "gw-1") -> dict:
        return await self._submit("/v1/reports", "reports", list(reports), "grid_worker", sub)

    async def incident(self, incident_id: str, role: str = "mediator") -> dict:
        r = await self.http.get(f"/v1/incidents/{incident_id}", headers=self.auth(role))
        assert r.status_code == 200, r.text
        return r.json()

    async def incidents(self, role: str = "police", **params) -> dict:
        r = await self.http.get("/v1/incidents", params=params, headers=self.auth(role))
        assert r.status_code == 200, r.text
        return r.json()

    async def move(self, incident_id: str, to: str, role: str, *, sub: str | None = None, **extra) -> httpx.Response:
        body = {"to": to, "reason": f"{role} moves it to {to}", **extra}
        return await self.http.post(f"/v1/incidents/{incident_id}/transitions", json=body, headers=self.auth(role, sub))


async def open_desk(stack, service_env) -> Desk:
    """Registry, incidents and the gateway (risk is not needed here), and a client of the gateway."""
    s = await stack(services=SERVICES)
    d = Desk(s.url("gateway"), service_env["JINSHUI_HOME"])
    d.stack = s
    return d


@pytest_asyncio.fixture
async def desk(stack, service_env):
    d = await open_desk(stack, service_env)
    yield d
    await d.http.aclose()


def applied(state: dict, index: int = 0) -> str:
    outcome = state["outcomes"][index]
    assert outcome["status"] == "applied", state
    return outcome["ref"]


def call(call_id: str, **extra) -> dict:
    return {"call_id": call_id, "received_at": ago(minutes=1), "category": "dispute", **extra}


async def test_a_dispute_and_a_police_call_at_one_household_an_hour_later_are_one_joint_incident(desk):
    await desk.household("JS1001", "金水小区3-2-501")
    state = await desk.reports(
        {"kind": "dispute", "household_code": "JS1001", "reported_at": ago(hours=1), "description": "楼上漏水"}
    )
    incident_id = applied(state)
    state = await desk.police_calls(call("110-0001", household_code="JS1001", description="邻里纠纷"))
    assert applied(state) == incident_id, "the police call joined the grid worker's incident"

    got = await desk.incident(incident_id)
    assert [s["origin"] for s in got["sources"]] == ["report", "police_call"]
    assert got["joint"] is True and got["status"] == "reported" and got["grid"] == "G01"
    reason = got["sources"][1]["match"]
    assert {"household_code", "category_group", "time_window"} <= set(reason["fields"])
    assert 0.6 < reason["score"] <= 1.0 and reason["matched_source_id"] == got["sources"][0]["id"]
    assert [t["what"] for t in got["timeline"]] == ["opened", "source_linked"]
    listed = await desk.incidents(household_code="JS1001")
    assert [i["id"] for i in listed["items"]] == [incident_id] and listed["items"][0]["sources"] == 2


async def test_the_same_call_at_a_different_address_gives_two_incidents_and_a_repeated_call_id_is_one_call(desk):
    await desk.household("JS2001", "金水小区1-1-101")
    await desk.household("JS2002", "金水小区5-1-101")
    state = await desk.police_calls(
        call("110-0100", household_code="JS2001", description="夫妻吵架"),
        call("110-0101", household_code="JS2002", description="夫妻吵架"),
        call("110-0100", household_code="JS2001", description="夫妻吵架"),
    )
    first, second = applied(state, 0), applied(state, 1)
    assert first != second, "different addresses are never merged"
    assert state["outcomes"][2]["status"] == "rejected"
    assert "110-0100 was already received" in state["outcomes"][2]["reason"]
    again = await desk.police_calls(call("110-0100", household_code="JS2001"))
    assert again["status"] == "rejected" and first in again["outcomes"][0]["reason"]
    assert len((await desk.incident(first))["sources"]) == 1


async def test_a_free_text_address_is_resolved_with_a_confidence_or_waits_in_the_unresolved_list(desk, database_url):
    await desk.household("JS3001", "金水小区3-2-501")
    person = id_number(7)
    state = await desk.police_calls(
        call("110-0200", address="3号楼2单元501", persons=[{"name": "张三", "id_number": person}, {"name": "李四"}]),
        call("110-0201", address="9号楼9单元909"),
    )
    resolved_id, unresolved_id = applied(state, 0), applied(state, 1)
    resolved = await desk.incident(resolved_id)
    assert resolved["household_code"] == "JS3001" and resolved["beat"] == "B1"
    source = resolved["sources"][0]
    assert source["address_resolved"] is True and 0.75 <= source["address_confidence"] < 1.0
    assert source["persons"] == [
        {"name": "张三", "role": None, "id_masked": person[:6] + "********" + person[-4:], "resolved": True},
        {"name": "李四", "role": None, "id_masked": None, "resolved": False},
    ]
    r = await desk.http.get("/v1/sources/unresolved", headers=desk.auth("mediator"))
    assert r.status_code == 200, r.text
    assert [(s["external_id"], s["incident_id"]) for s in r.json()["items"]] == [("110-0201", unresolved_id)]
    # Only the keyed hash and the masked form are kept: never the ID number in clear, nor its ciphertext.
    conn = await asyncpg.connect(database_url)
    try:
        dump = await conn.fetchval("SELECT string_agg(to_jsonb(s)::text, ' ') FROM incidents.sources s")
    finally:
        await conn.close()
    assert person not in dump and "ciphertext" not in dump and '"id_hash": "' in dump


async def test_a_visit_with_a_dispute_opens_a_report_that_a_police_call_joins(desk):
    await desk.household("JS4001", "金水小区4-1-101")
    r = await desk.http.post(
        "/v1/visits",
        json={"visits": [{"household_code": "JS4001", "visited_at": ago(minutes=30), "concerns": ["dispute"]}]},
        headers=desk.auth("grid_worker", "gw-1"),
    )
    assert r.status_code == 202, r.text

    async def opened():
        items = (await desk.incidents(household_code="JS4001"))["items"]
        return items[0] if items else None

    incident = await eventually(opened, timeout=60, interval=0.2, what="the visit's incident")
    assert incident["category"] == "report:dispute" and incident["origins"] == ["visit"]
    state = await desk.police_calls(call("110-0300", household_code="JS4001", category="fight"))
    assert applied(state) == incident["id"]
    assert (await desk.incident(incident["id"]))["joint"] is True


async def test_the_list_filters_and_pages_by_keyset_without_gaps_or_repeats(desk):
    codes = [f"JS50{i:02d}" for i in range(5)]
    await asyncio.gather(*(desk.household(c, f"金水小区6-1-{i + 1:03d}", grid="G02") for i, c in enumerate(codes)))
    await desk.police_calls(*(call(f"110-05{i:02d}", household_code=c) for i, c in enumerate(codes)))
    await desk.reports(
        {
            "kind": "hazard",
            "household_code": codes[0],
            "reported_at": ago(minutes=5),
            "hazard_category": "falling_tiles",
        }
    )
    seen, cursor = [], None
    while True:
        page = await desk.incidents(grid="G02", status="reported", limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 6
    hazards = await desk.incidents(kind="hazard")
    assert [i["category"] for i in hazards["items"]] == ["report:hazard"]
    r = await desk.http.get("/v1/incidents", params={"cursor": "nonsense"}, headers=desk.auth("police"))
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM


async def test_bad_police_calls_are_refused_naming_the_field(desk):
    r = await desk.http.post(
        "/v1/police-calls",
        json={
            "calls": [
                {
                    "call_id": "x",
                    "received_at": ago(minutes=1),
                    "category": "dispute",
                    "household_code": "H1",
                    "persons": [{"id_number": "370502198001010000"}],
                }
            ]
        },
        headers={**desk.auth("police_platform"), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"][0]["field"] == "body.calls[0].persons[0].id_number"
    assert "check digit" in r.json()["errors"][0]["reason"]
    r = await desk.http.post(
        "/v1/police-calls",
        json={"calls": [{"call_id": "x", "received_at": ago(minutes=1), "category": "dispute"}]},
        headers={**desk.auth("police_platform"), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert r.status_code == 422 and "household code or the address" in r.text
    r = await desk.http.post("/v1/reports", json={"reports": []}, headers=desk.auth("police_platform"))
    assert r.status_code == 403
