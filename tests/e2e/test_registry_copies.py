"""What incidents and risk copy from the registry follows the registry's newer events: bulk imports (as if
registered one by one), merges of persons and households (one person, one household from then on), deaths (no more
follow-up); and the household card shows the household's open incidents and risk level, composed at the door,
answering with the registry's part when risk is down."""

from __future__ import annotations

import signal
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import orjson
import pytest_asyncio

from jinshui.kit.testing import eventually, id_number
from jinshui.kit.tokens import issue_token

from . import settle

WANG = id_number("37050219750312123")
WANG_AGAIN = id_number("37050219750312204")  # the same man, entered a second time with a mistyped number
ZHAO = id_number("41010219880808123")


class Community:
    def __init__(self, stack, env) -> None:
        self.stack, self.home = stack, env["JINSHUI_HOME"]
        self.http = httpx.AsyncClient(base_url=stack.url("gateway"), timeout=30)

    def auth(self, role: str, sub: str | None = None, **extra) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}", **extra}

    async def ok(self, method: str, path: str, role: str = "community_admin", status: int = 200, **kw) -> dict:
        r = await self.http.request(method, path, headers=self.auth(role, f"{role}-1"), **kw)
        assert r.status_code == status, r.text
        return r.json()

    async def submitted(self, path: str, body: dict, role: str = "grid_worker", sub: str = "gw-3") -> dict:
        """A field submission, waited for: every record applied."""
        headers = self.auth(role, sub, Prefer="wait=25", **{"Idempotency-Key": str(uuid.uuid4())})
        r = await self.http.post(path, json=body, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        return r.json()

    async def caught_up(self) -> None:
        """Every event published and every consumer through its stream (twice in a row, so none was in flight)."""
        await settle.caught_up(self.stack, timeout=30)

    async def call(self, call_id: str, **fields) -> None:
        call = {"call_id": call_id, "received_at": datetime.now(UTC).isoformat(), "category": "dispute", **fields}
        await self.submitted("/v1/police-calls", {"calls": [call]}, "police_platform", "police-platform")

    async def incident_of(self, call_id: str) -> dict:
        async def found():
            for i in (await self.ok("GET", "/v1/incidents", "police", params={"limit": 200}))["items"]:
                detail = await self.ok("GET", f"/v1/incidents/{i['id']}", "police")
                if any(s["external_id"] == call_id for s in detail["sources"]):
                    return detail
            return None

        return await eventually(found, timeout=30, what=f"the incident of police call {call_id}")

    async def alerts(self, rule: str) -> list[dict]:
        return (await self.ok("GET", "/v1/alerts", "police", params={"rule": rule}))["alerts"]

    async def entries(self, **params) -> list[dict]:
        return (await self.ok("GET", "/v1/ledger", "police", params=params))["entries"]

    async def residents(self, code: str) -> dict[str, dict]:
        return {r["name"]: r for r in (await self.ok("GET", f"/v1/households/{code}", "police"))["residents"]}

    async def tag(self, number: str, tag: str = "unstable_person") -> None:
        record = {"tag": tag, "person": {"id_number": number}, "since": str(date.today()), "reason": "屡次扬言报复"}
        await self.submitted("/v1/tags", {"tags": [record]}, "community_admin", "admin-1")

    async def arrive(self, code: str, number: str, name: str, days_ago: float = 30) -> None:
        arrival = {
            "household_code": code,
            "person": {"name": name, "id_number": number},
            "kind": "permanent",
            "arrived_at": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(),
        }
        await self.submitted("/v1/residents/arrivals", {"arrivals": [arrival]})


@pytest_asyncio.fixture
async def community(stack, service_env):
    c = Community(await stack(), service_env)
    await c.ok("POST", "/v1/beats", json={"code": "B1", "name": "金水警格"}, status=201)
    await c.ok("POST", "/v1/grids", json={"code": "G03", "name": "第三网格", "beat": "B1"}, status=201)
    await c.ok("POST", "/v1/assignments", json={"person": "gw-3", "role": "grid_worker", "area": "G03"}, status=201)
    yield c
    await c.http.aclose()


async def test_imported_households_and_residents_are_known_to_incidents_and_risk(community):
    c = community
    first = (
        await c.ok("POST", "/v1/households", json={"address": "金水小区1号楼1单元101", "grid": "G03"}, status=201)
    )["code"]
    await c.arrive(first, WANG, "王某")
    await c.tag(WANG)
    [entry] = await eventually(lambda: c.entries(rule="ledger-unstable-person"), what="the ledger entry of the tag")
    assert entry["household_code"] == first
    leave = {"household_code": first, "person": {"id_number": WANG}, "departed_at": datetime.now(UTC).isoformat()}
    await c.submitted("/v1/residents/departures", {"departures": [leave]})

    # He turns up in the estate's spreadsheet, at a house the registry learns of from the import.
    today = date.today().isoformat()
    text = "地址,网格,户码,楼号,姓名,身份证号,电话,类别,到达日期,预计离开日期\n" + (
        f"金水小区9号楼1单元301,G03,,9,王某,{WANG},,常住,{today},\n"
        f"金水小区9号楼1单元301,G03,,9,赵某,{ZHAO},,常住,{today},\n"
    )
    r = await c.http.post(
        "/v1/imports",
        content=text.encode(),
        headers=c.auth("community_admin", "admin-1", **{"Content-Type": "text/csv"}),
    )
    assert r.status_code == 200, r.text
    summary = orjson.loads(r.content.splitlines()[0])
    assert (summary["households_new"], summary["residencies_new"]) == (1, 2), summary
    found = await c.ok("POST", "/v1/persons/search", "police", json={"address": "9号楼1单元301"})
    imported = found["persons"][0]["household_code"]

    # Risk follows the imported arrival as it would a registered one: the key person's entry moves with him.
    async def moved():
        [e] = await c.entries(rule="ledger-unstable-person")
        return e if e["household_code"] == imported else None

    assert (await eventually(moved, what="the ledger entry following the imported arrival"))["grid"] == "G03"

    await c.caught_up()
    # A police call giving only the address lands at the imported household, and rule 1 sees the tagged man.
    await c.call("110-IMP-1", address="金水小区9-1-301", persons=[{"name": "王某", "id_number": WANG}])
    incident = await c.incident_of("110-IMP-1")
    assert incident["household_code"] == imported and incident["beat"] == "B1"

    async def rule1():
        return [a for a in await c.alerts("tagged-person-police-call") if a["household_code"] == imported]

    [alert] = await eventually(rule1, timeout=30, what="rule 1's alert at the imported household")
    assert alert["level"] == "HIGH"


async def test_merged_persons_and_households_are_one_to_incidents_and_risk_and_the_dead_are_followed_no_more(
    community,
):
    c = community
    address = {"address": "金水小区5号楼2单元602", "grid": "G03"}
    kept, dup = [(await c.ok("POST", "/v1/households", json=address, status=201))["code"] for _ in range(2)]
    # The same household registered twice: an address names two, so a call by address cannot say which.
    await c.caught_up()
    await c.call("110-DUP-1", address="金水小区5-2-602")
    assert (await c.incident_of("110-DUP-1"))["household_code"] is None

    # Wang is resident and tagged; a second record of him (a mistyped ID number) lived in the duplicate.
    await c.arrive(kept, WANG, "王某")
    await c.tag(WANG)
    await c.arrive(dup, WANG_AGAIN, "王某", days_ago=20)
    leave = {"household_code": dup, "person": {"id_number": WANG_AGAIN}, "departed_at": datetime.now(UTC).isoformat()}
    await c.submitted("/v1/residents/departures", {"departures": [leave]})
    wang = (await c.residents(kept))["王某"]["person_id"]
    found = await c.ok("POST", "/v1/persons/search", "police", json={"id_number": WANG_AGAIN})
    [twin] = [p["person_id"] for p in found["persons"]]
    await c.ok("POST", "/v1/persons/merge", json={"keep": wang, "merge": twin, "reason": "同一人，身份证号录错"})
    await c.ok("POST", "/v1/households/merge", json={"keep": kept, "merge": dup, "reason": "同一户重复登记"})
    await c.caught_up()

    # A call naming the merged record's number is about the tagged man (rule 1); a call naming the merged
    # household's code, or giving the address, lands at the kept household.
    await c.call("110-MRG-1", household_code=dup, persons=[{"name": "王某", "id_number": WANG_AGAIN}])
    assert (await c.incident_of("110-MRG-1"))["household_code"] == kept
    [alert] = await eventually(
        lambda: c.alerts("tagged-person-police-call"), timeout=30, what="rule 1's alert naming the merged record"
    )
    assert alert["household_code"] == kept and "110-MRG-1" in alert["explanation"]
    await c.call("110-DUP-2", category="noise", address="金水小区5号楼2单元602室")
    assert (await c.incident_of("110-DUP-2"))["household_code"] == kept

    # His death closes his ledger entry: no review is due, so no task or alert of rule 6 will come.
    [entry] = await eventually(lambda: c.entries(rule="ledger-unstable-person"), what="the ledger entry")
    await c.ok("POST", f"/v1/persons/{wang}/death", json={"died_on": date.today().isoformat(), "reason": "病故"})

    async def closed():
        e = await c.ok("GET", f"/v1/ledger/{entry['id']}", "police")
        return e if e["status"] == "closed" else None

    done = await eventually(closed, what="the ledger entry closed by the death")
    assert done["next_review_at"] is None
    assert "died" in done["history"][-1]["reason"]


async def test_the_household_card_shows_open_incidents_and_risk_level_and_answers_without_risk(community):
    c = community
    code = (await c.ok("POST", "/v1/households", json={"address": "金水小区3号楼2单元501", "grid": "G03"}, status=201))[
        "code"
    ]
    await c.call("110-CARD-1", household_code=code)

    async def card_with_risk():
        card = await c.ok("GET", f"/v1/households/{code}", "police")
        return card if card["risk"]["level"] is not None and card["incidents"]["open"] else None

    card = await eventually(card_with_risk, timeout=30, what="the card with the incident and the risk level")
    assert card["code"] == code and card["grid"] == "G03"
    assert [i["household_code"] for i in card["incidents"]["open"]] == [code]
    assert card["incidents"]["status"] == card["risk"]["status"] == "available"
    assert card["risk"]["score"] > 0
    mediator = await c.ok("GET", f"/v1/households/{code}", "mediator")
    assert mediator["risk"] == {**mediator["risk"], "status": "not_shown", "level": None}
    assert mediator["incidents"]["status"] == "available"

    # A visit voided (entered by mistake) no longer counts as the household's last visit (rule 7's copy).
    visit = {"household_code": code, "visited_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
    visit_id = (await c.submitted("/v1/visits", {"visits": [visit]}))["outcomes"][0]["ref"]

    async def last_visit(expected):
        profile = await c.ok("GET", f"/v1/profiles/households/{code}", "police")
        return profile if (profile["last_visited_at"] is None) == (expected is None) else None

    assert (await eventually(lambda: last_visit("set"), what="the visit in risk's copy"))["last_visited_at"]
    void = {"kind": "visit", "id": visit_id, "reason": "重复录入"}
    await c.ok("POST", "/v1/voids", json=void)
    await eventually(lambda: last_visit(None), what="the voided visit no longer counted")

    c.stack.kill("risk", signal.SIGKILL)
    await c.stack.wait_exit("risk", 10)
    started = datetime.now(UTC)
    down = await c.ok("GET", f"/v1/households/{code}", "police")
    assert (datetime.now(UTC) - started).total_seconds() < 5
    assert down["risk"]["status"] == "unavailable" and down["risk"]["level"] is None
    assert down["code"] == code and down["incidents"]["status"] == "available" and down["incidents"]["open"]
