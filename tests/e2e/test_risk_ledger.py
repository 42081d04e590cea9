"""Risk through the gateway: the close-out ledger (opened by a tag, followed up by visits, closed by two
signatures), rule 6 (a missed review: a task, then an alert), rule 3's letting half, rule 7 (the month's
visits), and risk profiles with decaying scores. The kit's clock is moved, never waited for."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest_asyncio

from jinshui.kit.clock import AdjustableClock, advance
from jinshui.kit.testing import eventually, id_number
from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"
DAY = 86400.0
SHANGHAI = ZoneInfo("Asia/Shanghai")


class Community:
    def __init__(self, stack, env) -> None:
        self.stack, self.home, self.clock_file = stack, env["JINSHUI_HOME"], env["JINSHUI_CLOCK_FILE"]
        self.http = httpx.AsyncClient(base_url=stack.url("gateway"), timeout=30)

    def now(self) -> datetime:
        return AdjustableClock(self.clock_file).now()

    def advance(self, days: float) -> None:
        advance(self.clock_file, days * DAY)

    def auth(self, role: str, sub: str | None = None, **extra) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}", **extra}

    async def ok(self, path: str, body: dict, headers: dict, status: int = 201) -> dict:
        r = await self.http.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text
        return r.json()

    async def get(self, path: str, role: str, sub: str | None = None, **params) -> dict:
        r = await self.http.get(path, params=params, headers=self.auth(role, sub))
        assert r.status_code == 200, r.text
        return r.json()

    async def settled(self, path: str, body: dict, role: str = "grid_worker", sub: str = "gw-3") -> dict:
        headers = self.auth(role, sub, Prefer="wait=25", **{"Idempotency-Key": str(uuid.uuid4())})
        state = await self.ok(path, body, headers, 200)
        assert state["status"] == "applied", state
        return state

    async def arrive(self, number: str, name: str, household: str, kind: str = "permanent") -> None:
        arrival = {
            "household_code": household,
            "person": {"name": name, "id_number": number},
            "kind": kind,
            "arrived_at": (self.now() - timedelta(days=60)).isoformat(),
        }
        await self.settled("/v1/residents/arrivals", {"arrivals": [arrival]})

    async def tag(self, number: str, tag: str) -> str:
        since = str((self.now() - timedelta(days=1)).date())
        body = {"tags": [{"tag": tag, "person": {"id_number": number}, "since": since, "reason": "threats"}]}
        return (await self.settled("/v1/tags", body, "community_admin", "admin-1"))["outcomes"][0]["ref"]

    async def visit(self, household: str) -> None:
        visit = {"household_code": household, "visited_at": self.now().isoformat()}
        await self.settled("/v1/visits", {"visits": [visit]})

    async def tasks(self, rule: str, sub: str = "gw-3") -> list[dict]:
        return [t for t in (await self.get("/v1/tasks", "grid_worker", sub))["tasks"] if t["rule"] == rule]

    async def entries(self, rule: str = "ledger-unstable-person", **params) -> list[dict]:
        return (await self.get("/v1/ledger", "grid_worker", "gw-3", rule=rule, **params))["entries"]


@pytest_asyncio.fixture
async def community(stack, service_env):
    c = Community(await stack(services=("registry", "incidents", "risk", "gateway")), service_env)
    admin = c.auth("community_admin")
    await c.ok("/v1/beats", {"code": "B1", "name": "金水警格"}, admin)
    for grid in ("G03", "G04"):
        await c.ok("/v1/grids", {"code": grid, "name": f"网格{grid}", "beat": "B1"}, admin)
    await c.ok("/v1/assignments", {"person": "gw-3", "role": "grid_worker", "area": "G03"}, admin)
    await c.ok("/v1/assignments", {"person": "gw-4", "role": "grid_worker", "area": "G04"}, admin)
    c.household = (await c.ok("/v1/households", {"address": "金水小区3-2-501", "grid": "G03"}, admin))["code"]
    c.other = (await c.ok("/v1/households", {"address": "金水小区3-2-502", "grid": "G03"}, admin))["code"]
    yield c
    await c.http.aclose()


async def test_a_tag_opens_a_ledger_entry_visits_follow_it_up_and_two_signatures_close_it(community):
    c = community
    wang = id_number("37050219750312123")
    await c.arrive(wang, "王某", c.household)
    tag_id = await c.tag(wang, "unstable_person")
    [entry] = await eventually(c.entries, what="the ledger entry opened by the tag")
    assert entry["status"] == "open" and entry["interval_days"] == 30 and entry["household_code"] == c.household
    opened = datetime.fromisoformat(entry["opened_at"])
    assert datetime.fromisoformat(entry["next_review_at"]) == opened + timedelta(days=30)
    assert entry["evidence"][0]["type"] == "org.jinshui.registry.tag.set.v1"
    assert wang not in str(entry)
    assert (await c.get("/v1/ledger", "grid_worker", "gw-4"))["entries"] == [], "another grid's worker sees none"

    await c.visit(c.household)

    async def followed():
        d = await c.get(f"/v1/ledger/{entry['id']}", "grid_worker", "gw-3")
        return d if d["follow_ups"] else None

    detail = await eventually(followed, what="the visit as a follow-up")
    assert detail["follow_ups"][0]["by"] == "gw-3"
    assert detail["follow_ups"][0]["evidence"][0]["type"] == "org.jinshui.registry.visit.recorded.v1"
    assert datetime.fromisoformat(detail["next_review_at"]) > opened + timedelta(days=30), "the review clock restarts"

    ended_on = str(c.now().astimezone(SHANGHAI).date())
    end = {"tags": [{"tag_id": tag_id, "ended_on": ended_on, "reason": "情绪稳定"}]}
    await c.settled("/v1/tags/end", end, "community_admin", "admin-1")

    async def noted():
        d = await c.get(f"/v1/ledger/{entry['id']}", "police")
        return [h for h in d["history"] if h["what"] == "tag_ended"]

    [note] = await eventually(noted, what="the ended tag noted on the entry")
    assert "情绪稳定" in note["reason"]
    assert (await c.get(f"/v1/ledger/{entry['id']}", "police"))["status"] == "open", "an ended tag closes nothing"

    close = f"/v1/ledger/{entry['id']}/close"
    signed = await c.ok(close, {"reason": "稳定一年，无异常"}, c.auth("police", "officer-1"), 200)
    assert signed["status"] == "open" and [s["role"] for s in signed["signatures"]] == ["police"]
    r = await c.http.post(close, json={"reason": "again"}, headers=c.auth("police", "officer-2"))
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM and "police signature" in r.json()["detail"]
    r = await c.http.post(close, json={"reason": "me again"}, headers=c.auth("community_admin", "officer-1"))
    assert r.status_code == 409 and "two different people" in r.json()["detail"]
    r = await c.http.post(close, json={}, headers=c.auth("community_admin", "admin-1"))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and "reason" in r.text
    r = await c.http.post(close, json={"reason": "a\x00b"}, headers=c.auth("community_admin", "admin-1"))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    r = await c.http.post(close, json={"reason": "x"}, headers=c.auth("grid_worker", "gw-3"))
    assert r.status_code == 403
    assert (await c.get(f"/v1/ledger/{entry['id']}", "police"))["status"] == "open", "one signature closes nothing"

    closed = await c.ok(close, {"reason": "社区核实，已销号"}, c.auth("community_admin", "admin-1"), 200)
    assert closed["status"] == "closed" and closed["closed_at"] is not None
    assert {(s["role"], s["by"]) for s in closed["signatures"]} == {
        ("police", "officer-1"),
        ("community_admin", "admin-1"),
    }
    assert [h["what"] for h in closed["history"]][-3:] == ["signed", "signed", "closed"]
    r = await c.http.post(close, json={"reason": "late"}, headers=c.auth("police", "officer-3"))
    assert r.status_code == 409 and r.json()["status_now"] == "closed"
    still = await c.get("/v1/ledger", "police", status="closed")
    assert [e["id"] for e in still["entries"]] == [entry["id"]], "a closed entry stays visible"


async def test_a_missed_review_tasks_the_grid_worker_and_a_second_miss_alerts_the_desk(community):
    c = community
    zhou = id_number("37050219800101456")
    await c.arrive(zhou, "周某", c.household)
    await c.tag(zhou, "unstable_person")
    [entry] = await eventually(c.entries, what="the ledger entry")
    assert await c.tasks("ledger-review-missed") == []

    c.advance(31)
    [task] = await eventually(lambda: c.tasks("ledger-review-missed"), timeout=30, what="the review task")
    assert task["assignee"] == "gw-3" and task["household_code"] == c.household and entry["id"] in task["title"]
    assert task["evidence"][0]["type"] == "org.jinshui.risk.ledger.review_missed.v1"
    alerts = await c.get("/v1/alerts", "police", rule="ledger-review-missed-twice")
    assert alerts["alerts"] == [], "one miss is a task, not yet an alert"

    c.advance(30)

    async def alert():
        return (await c.get("/v1/alerts", "police", rule="ledger-review-missed-twice"))["alerts"]

    [raised] = await eventually(alert, timeout=30, what="the alert after the second miss")
    assert raised["level"] == "MEDIUM" and raised["beat"] == "B1" and entry["id"] in raised["explanation"]
    assert (await c.get(f"/v1/ledger/{entry['id']}", "police"))["misses"] == 2
    [urgent] = await eventually(lambda: c.tasks("ledger-review-missed-twice"), what="the task with the alert")
    assert urgent["alert_id"] == raised["id"] and len(await c.tasks("ledger-review-missed")) == 1

    await c.visit(c.household)  # the follow-up: tasks done, the alert resolved, the count of misses back to 0

    async def resolved():
        return (await c.get(f"/v1/alerts/{raised['id']}", "police"))["status"] == "resolved"

    await eventually(resolved, what="the alert resolved by the visit")
    assert await c.tasks("ledger-review-missed-twice") == [] and await c.tasks("ledger-review-missed") == []
    assert (await c.get(f"/v1/ledger/{entry['id']}", "police"))["misses"] == 0


async def test_tenants_still_resident_a_week_after_a_letting_stopped_get_a_confirm_departure_task_across_a_crash(
    community,
):
    c = community
    li, zhao, sun = id_number("37050219851212002"), id_number("37050219900202003"), id_number("37050219910303004")
    for number, name, household in ((li, "李娜", c.household), (zhao, "赵强", c.household), (sun, "孙丽", c.other)):
        await c.arrive(number, name, household, kind="tenant")
    lettings = []
    for household, tenants in ((c.household, [li, zhao]), (c.other, [sun])):
        letting = {
            "household_code": household,
            "landlord": "王建国",
            "tenants": [{"id_number": t} for t in tenants],
            "starts_on": str((c.now() - timedelta(days=50)).date()),
        }
        lettings.append((await c.settled("/v1/lettings", {"lettings": [letting]}))["outcomes"][0]["ref"])
    today = str(c.now().astimezone(SHANGHAI).date())
    for letting_id in lettings:
        await c.settled(f"/v1/lettings/{letting_id}/stop", {"stopped_on": today, "reason": "合同到期"})
    departed = (c.now() - timedelta(minutes=5)).isoformat()
    departures = [
        {"household_code": c.household, "person": {"id_number": li}, "departed_at": departed},
        {"household_code": c.other, "person": {"id_number": sun}, "departed_at": departed},
    ]
    await c.settled("/v1/residents/departures", {"departures": departures})

    await c.visit(c.other)  # after the departures on REGISTRY: once risk has it, it has them

    async def caught_up():
        return (await c.get(f"/v1/profiles/households/{c.other}", "police"))["last_visited_at"]

    await eventually(caught_up, what="risk caught up with the registry")
    c.advance(6)
    assert await c.tasks("confirm-departure-letting") == []
    c.stack.kill("risk")  # the window is a row in PostgreSQL: a crash loses it not
    assert await c.stack.wait_exit("risk", 10) is not None
    c.advance(2)
    await c.stack.start_service("risk")
    [task] = await eventually(lambda: c.tasks("confirm-departure-letting"), timeout=30, what="the departure task")
    assert task["household_code"] == c.household and "the 1 tenant(s)" in task["title"]
    assert task["evidence"][0]["type"] == "org.jinshui.risk.letting.departure_unconfirmed.v1"
    # The other letting's only tenant left before the week was out: its timer was cancelled.
    assert [t["household_code"] for t in await c.tasks("confirm-departure-letting")] == [c.household]


def _next_month_first(now: datetime) -> datetime:
    local = now.astimezone(SHANGHAI)
    return (local.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def test_a_household_not_visited_by_the_months_last_week_gives_its_grid_worker_a_task(community):
    c = community
    first = _next_month_first(c.now())
    month = first.strftime("%Y-%m")
    c.advance((first + timedelta(days=1) - c.now()).total_seconds() / DAY)  # the 2nd of next month
    await c.visit(c.household)  # visited this month; the other household not

    async def seen():
        return (await c.get(f"/v1/profiles/households/{c.household}", "police"))["last_visited_at"]

    await eventually(seen, what="risk has the visit")
    last_week = _next_month_first(first) - timedelta(days=7)
    c.advance((last_week + timedelta(hours=1) - c.now()).total_seconds() / DAY)

    async def due():
        return [t for t in await c.tasks("monthly-visit") if month in t["title"]]

    [task] = await eventually(due, timeout=30, what="the monthly visit task")
    assert task["household_code"] == c.other and task["assignee"] == "gw-3"
    assert task["evidence"][0]["type"] == "org.jinshui.risk.household.visit_overdue.v1"
    await c.visit(c.other)
    assert await eventually(lambda: _none(due), what="the task closed by the visit") == "none"


async def _none(check) -> str | None:
    return "none" if await check() == [] else None


async def test_profiles_show_the_score_its_factors_and_decay(community):
    c = community
    wang = id_number("37050219750312123")
    await c.arrive(wang, "王某", c.household)
    await c.tag(wang, "unstable_person")
    [entry] = await eventually(c.entries, what="the ledger entry")
    person = entry["person_hash"]
    call = {
        "call_id": "110-P-1",
        "received_at": c.now().isoformat(),
        "category": "noise",
        "household_code": c.household,
        "persons": [{"name": "王某", "id_number": wang}],
    }
    await c.settled("/v1/police-calls", {"calls": [call]}, "police_platform", "police-platform")

    async def profile():
        p = await c.get(f"/v1/profiles/persons/{person}", "police")
        return p if len(p["factors"]) == 2 else None

    p = await eventually(profile, timeout=30, what="both factors on the person's profile")
    assert 29.9 < p["score"] <= 30 and p["level"] == "MEDIUM"
    assert {f["rule"] for f in p["factors"]} == {"ledger-unstable-person", "police-call-involvement"}
    assert [t["tag"] for t in p["tags"]] == ["unstable_person"] and p["ledger"][0]["id"] == entry["id"]
    assert all(f["events"] for f in p["factors"]) and len(p["history"]) == 2

    home = await c.get(f"/v1/profiles/households/{c.household}", "community_admin")
    assert 9.9 < home["score"] <= 10 and home["level"] == "LOW"
    assert home["factors"][0]["events"][0]["type"] == "org.jinshui.incidents.incident.opened.v1"
    building = await c.get("/v1/profiles/addresses/金水小区3-2", "police")
    scores = {h["code"]: h["score"] for h in building["households"]}
    assert scores[c.other] == 0 and 9.9 < scores[c.household] <= 10 and building["score"] == home["score"]
    r = await c.http.get("/v1/profiles/addresses/银水小区", headers=c.auth("police"))
    assert r.status_code == 404

    c.advance(20)  # police call halves every 30 days, the tag every 90: 10*0.5^(2/3) + 20*0.5^(2/9)
    p = await c.get(f"/v1/profiles/persons/{person}", "police")
    assert abs(p["score"] - (10 * 0.5 ** (2 / 3) + 20 * 0.5 ** (2 / 9))) < 0.1 and p["level"] == "MEDIUM"
    r = await c.http.get("/v1/profiles/persons/no-such-person-hash", headers=c.auth("police"))
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
