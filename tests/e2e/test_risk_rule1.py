"""Rule 1 end to end: tag a person, a police call names them, the HIGH alert reaches the desk and the task the
grid worker, whose visit closes it; and rule 2, three incidents at one household within 30 days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import pytest_asyncio

from jinshui.kit.testing import eventually, id_number
from jinshui.kit.tokens import issue_token

from .settle import caught_up
from .sse import SseClient


class Community:
    def __init__(self, stack, env) -> None:
        self.stack, self.home = stack, env["JINSHUI_HOME"]
        self.http = httpx.AsyncClient(base_url=stack.url("gateway"), timeout=30)

    def auth(self, role: str, sub: str | None = None, **extra) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}", **extra}

    async def ok(self, path: str, body: dict, headers: dict, status: int = 201) -> dict:
        r = await self.http.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text
        return r.json()

    async def settled(self, path: str, body: dict, role: str, sub: str) -> dict:
        state = await self.ok(
            path, body, self.auth(role, sub, Prefer="wait=25", **{"Idempotency-Key": path + sub}), 200
        )
        assert state["status"] == "applied", state
        return state

    def stream(self) -> SseClient:
        return SseClient(self.stack.url("gateway") + "/v1/alerts/stream", issue_token(home=self.home, role="police"))


@pytest_asyncio.fixture
async def community(stack, service_env):
    c = Community(await stack(), service_env)
    admin = c.auth("community_admin")
    await c.ok("/v1/beats", {"code": "B1", "name": "金水警格"}, admin)
    await c.ok("/v1/grids", {"code": "G03", "name": "第三网格", "beat": "B1"}, admin)
    await c.ok("/v1/assignments", {"person": "gw-3", "role": "grid_worker", "area": "G03"}, admin)
    household = await c.ok("/v1/households", {"address": "金水小区3-2-501", "grid": "G03"}, admin)
    c.household = household["code"]
    yield c
    await c.http.aclose()


async def test_a_police_call_naming_a_tagged_person_alerts_the_desk_and_tasks_the_grid_worker(community):
    c = community
    wang = id_number("37050219750312123")
    arrival = {
        "household_code": c.household,
        "person": {"name": "王某", "id_number": wang},
        "kind": "permanent",
        "arrived_at": (datetime.now(UTC) - timedelta(days=400)).isoformat(),
    }
    await c.settled("/v1/residents/arrivals", {"arrivals": [arrival]}, "grid_worker", "gw-3")
    tag = {
        "tag": "unstable_person",
        "person": {"id_number": wang},
        "since": str(date.today() - timedelta(days=30)),
        "reason": "repeated threats against neighbours",
    }
    await c.settled("/v1/tags", {"tags": [tag]}, "community_admin", "admin-1")
    # Risk learns of the tag from the registry's stream and of the call from incidents': another consumer, in no
    # set order. The call is made once risk has the tag (and the grid worker's assignment), as on a real desk.
    await caught_up(c.stack)

    async with c.stream() as sse:
        call = {
            "call_id": "110-20261126-0042",
            "received_at": datetime.now(UTC).isoformat(),
            "category": "dispute",
            "household_code": c.household,
            "description": "邻里纠纷，一方情绪激动",
            "persons": [{"name": "王某", "id_number": wang}, {"name": "李某"}],
        }
        await c.settled("/v1/police-calls", {"calls": [call]}, "police_platform", "police-platform")

        def high():
            return [
                e.json["data"]
                for e in sse.alerts
                if e.json["type"].endswith("alert.raised.v1") and e.json["data"]["rule"] == "tagged-person-police-call"
            ]

        alert = (await eventually(high, timeout=40, what="the HIGH alert on the desk's stream"))[0]
        assert alert["level"] == "HIGH" and alert["beat"] == "B1" and alert["household_code"] == c.household
        assert "110-20261126-0042" in alert["explanation"]
        assert wang not in str(sse.events), "the ID number never reaches the desk's stream"

        async def tasks():
            r = await c.http.get("/v1/tasks", headers=c.auth("grid_worker", "gw-3"))
            return [t for t in r.json()["tasks"] if t["rule"] == "tagged-person-police-call"]

        task = (await eventually(tasks, what="the grid worker's task"))[0]
        assert task["assignee"] == "gw-3" and task["alert_id"] == alert["alert_id"]

        visit = {"household_code": c.household, "visited_at": datetime.now(UTC).isoformat()}
        await c.settled("/v1/visits", {"visits": [visit]}, "grid_worker", "gw-3")
        assert await eventually(lambda: _none(tasks), what="the task closed by the visit") == "none"


async def _none(tasks) -> str | None:
    return "none" if await tasks() == [] else None


async def test_three_incidents_at_one_household_within_30_days_raise_a_repeat_address_alert(community):
    c = community
    async with c.stream() as sse:
        for n, category in enumerate(("noise", "theft", "traffic")):  # three groups: three incidents
            call = {
                "call_id": f"110-R-{n}",
                "received_at": datetime.now(UTC).isoformat(),
                "category": category,
                "household_code": c.household,
            }
            await c.settled("/v1/police-calls", {"calls": [call]}, "police_platform", f"pp-{n}")

        def repeat():
            return [e.json["data"] for e in sse.alerts if e.json["data"].get("rule") == "repeat-address"]

        alert = (await eventually(repeat, timeout=40, what="the repeat-address alert"))[0]
        assert alert["level"] == "MEDIUM" and alert["household_code"] == c.household
        assert len(alert["evidence"]) == 3


async def test_a_floating_residency_past_its_end_gives_the_grid_worker_a_confirm_departure_task(community, service_env):
    from jinshui.kit.clock import advance

    c = community
    now = datetime.now(UTC)
    arrival = {
        "household_code": c.household,
        "person": {"name": "流动人员甲", "id_number": id_number("41010219950505123")},
        "kind": "floating",
        "arrived_at": (now - timedelta(days=170)).isoformat(),
        "expected_end": (now + timedelta(hours=1)).isoformat(),
    }
    await c.settled("/v1/residents/arrivals", {"arrivals": [arrival]}, "grid_worker", "gw-3")

    async def tasks():
        r = await c.http.get("/v1/tasks", headers=c.auth("grid_worker", "gw-3"))
        return [t for t in r.json()["tasks"] if t["rule"] == "confirm-departure"]

    await caught_up(c.stack)  # risk has taken the arrival: no task while the residency runs
    assert await tasks() == []
    advance(service_env["JINSHUI_CLOCK_FILE"], 2 * 3600)
    task = (await eventually(tasks, timeout=40, what="the confirm-departure task"))[0]
    assert task["assignee"] == "gw-3" and task["household_code"] == c.household
    assert "Confirm whether the floating resident" in task["title"]
