"""Following an incident through: clocks paused while waiting on a party, extensions asked and decided, follow-up
visits after closing (事后消解), and the statistics those closings make."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest_asyncio

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .test_incidents_intake import PROBLEM, Desk, ago, applied, call, open_desk


@pytest_asyncio.fixture
async def desk(stack, service_env):
    d = await open_desk(stack, service_env)
    yield d
    await d.http.aclose()


def due(incident: dict, deadline: str, stage: str = "overdue") -> datetime:
    found = [d for d in incident["deadlines"] if d["deadline"] == deadline and d["stage"] == stage]
    assert len(found) == 1, incident["deadlines"]
    return datetime.fromisoformat(found[0]["due_at"])


async def post(desk: Desk, path: str, body: dict, role: str, sub: str | None = None):
    return await desk.http.post(path, json=body, headers=desk.auth(role, sub or f"{role}-1"))


async def close(desk: Desk, incident_id: str, *, satisfied: bool = True) -> None:
    for to in ("accepted", "assigned", "in_hand", "resolved"):
        r = await desk.move(incident_id, to, "police")
        assert r.status_code == 200, r.text
    r = await desk.move(incident_id, "closed", "police", satisfaction={"satisfied": satisfied})
    assert r.status_code == 200, r.text


async def test_a_pause_stops_the_clocks_and_resuming_moves_every_deadline_by_the_time_paused(desk, service_env):
    await desk.household("JS9001", "金水小区9-1-101")
    await desk.household("JS9002", "金水小区9-1-102")
    incident_id = applied(await desk.police_calls(call("110-9001", household_code="JS9001")))
    # Not paused, opened later: once its hour to accept has fired, the deadlines have been looked at past the
    # paused incident's own (timers fire in the order they are due).
    control_id = applied(await desk.police_calls(call("110-9002", household_code="JS9002")))
    before = await desk.incident(incident_id)
    accept_due, resolve_due = due(before, "accept"), due(before, "resolve")
    path = f"/v1/incidents/{incident_id}/pause"
    r = await post(desk, path, {"waiting_on": "当事人外出务工", "reason": "等当事人回来再调解"}, "mediator")
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["paused"]["waiting_on"] == "当事人外出务工" and paused["deadlines"] == []
    assert len(paused["paused"]["deadlines"]) == 4
    r = await post(desk, path, {"waiting_on": "x", "reason": "again"}, "mediator")
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM and r.json()["type"].endswith("already-paused")
    r = await post(desk, path, {"waiting_on": "x", "reason": "y"}, "grid_worker")
    assert r.status_code == 403

    advance(service_env["JINSHUI_CLOCK_FILE"], 3 * 3600)  # past the hour to accept: nothing may fire while paused

    async def control_overdue():
        return (await desk.incident(control_id))["overdue"]

    await eventually(control_overdue, timeout=30, interval=0.25, what="the unpaused incident's deadline to fire")
    r = await post(desk, f"/v1/incidents/{incident_id}/resume", {"reason": "当事人已回"}, "mediator")
    assert r.status_code == 200, r.text
    resumed = r.json()
    assert resumed["paused"] is None and resumed["overdue"] is False and resumed["status"] == "reported"
    shift = timedelta(seconds=resumed["paused_seconds"])
    assert timedelta(hours=3) <= shift < timedelta(hours=3, minutes=5)
    assert due(resumed, "accept") == accept_due + shift and due(resumed, "resolve") == resolve_due + shift
    assert [t["what"] for t in resumed["timeline"]] == ["opened", "paused", "resumed"]
    assert all(d["fired_at"] is None for d in resumed["deadlines"]), "no deadline fired while paused"
    r = await post(desk, f"/v1/incidents/{incident_id}/resume", {"reason": "again"}, "mediator")
    assert r.status_code == 409 and r.json()["type"].endswith("not-paused")


async def test_an_extension_asked_and_approved_moves_the_time_to_resolve_once(desk):
    await desk.household("JS9101", "金水小区9-1-201")
    incident_id = applied(await desk.police_calls(call("110-9101", household_code="JS9101")))
    resolve_due = due(await desk.incident(incident_id), "resolve")
    path = f"/v1/incidents/{incident_id}/extensions"
    r = await post(desk, path, {"days": 0, "reason": "x"}, "mediator")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.days"
    r = await post(desk, path, {"days": 2, "reason": "需等待房屋鉴定结果"}, "mediator")
    assert r.status_code == 201, r.text
    ext = r.json()
    assert ext["status"] == "requested" and ext["requested_by"] == "mediator-1" and ext["days"] == 2
    r = await post(desk, path, {"days": 1, "reason": "again"}, "grid_worker")
    assert r.status_code == 409 and r.json()["type"].endswith("extension-pending")

    decide = f"{path}/{ext['id']}/decision"
    r = await post(desk, decide, {"decision": "approved", "reason": "同意"}, "mediator")
    assert r.status_code == 403, "mediators ask; community admins and police decide"
    r = await post(desk, decide, {"decision": "approved", "reason": "同意延期两天"}, "community_admin")
    assert r.status_code == 200, r.text
    decided = r.json()
    assert decided["status"] == "approved" and decided["decided_by"] == "community_admin-1"
    assert datetime.fromisoformat(decided["resolve_due_before"]) == resolve_due
    assert datetime.fromisoformat(decided["resolve_due_after"]) == resolve_due + timedelta(days=2)
    got = await desk.incident(incident_id)
    assert due(got, "resolve") == resolve_due + timedelta(days=2)
    assert due(got, "resolve", "due_soon") > resolve_due
    r = await post(desk, decide, {"decision": "refused", "reason": "改主意了"}, "police")
    assert r.status_code == 409 and r.json()["type"].endswith("already-decided")
    assert due(await desk.incident(incident_id), "resolve") == resolve_due + timedelta(days=2), "nothing applied"
    r = await post(desk, f"{path}/no-such-extension/decision", {"decision": "approved", "reason": "x"}, "police")
    assert r.status_code == 404

    second = (await post(desk, path, {"days": 5, "reason": "再延"}, "police")).json()
    r = await post(desk, f"{path}/{second['id']}/decision", {"decision": "refused", "reason": "不予延期"}, "police")
    assert r.status_code == 200 and r.json()["status"] == "refused" and r.json()["resolve_due_after"] is None
    got = await desk.incident(incident_id)
    assert due(got, "resolve") == resolve_due + timedelta(days=2)
    assert [e["status"] for e in got["extensions"]] == ["approved", "refused"]
    assert [t["what"] for t in got["timeline"]][1:] == ["extension_requested", "extension_decided"] * 2

    await close(desk, incident_id)
    r = await post(desk, path, {"days": 1, "reason": "结案后"}, "police")
    assert r.status_code == 409 and r.json()["type"].endswith("no-running-deadline")


async def test_follow_up_visits_after_closing_are_recorded_and_one_not_settled_may_reopen(desk):
    await desk.household("JS9201", "金水小区9-2-101")
    incident_id = applied(await desk.police_calls(call("110-9201", household_code="JS9201")))
    path = f"/v1/incidents/{incident_id}/follow-ups"
    visit = {"visited_at": ago(minutes=5), "note": "双方关系缓和", "still_settled": True}
    r = await post(desk, path, visit, "grid_worker", "gw-9")
    assert r.status_code == 409 and r.json()["type"].endswith("not-closed")
    await close(desk, incident_id)

    r = await post(desk, path, visit, "grid_worker", "gw-9")
    assert r.status_code == 201, r.text
    assert r.json()["visited_by"] == "gw-9" and r.json()["still_settled"] is True
    r = await post(desk, path, {**visit, "visited_at": ago(minutes=-60)}, "grid_worker", "gw-9")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.visited_at"
    r = await post(desk, path, {**visit, "reopen": True}, "mediator")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.reopen"
    unsettled = {"visited_at": ago(minutes=1), "note": "又因漏水争吵", "still_settled": False, "reopen": True}
    r = await post(desk, path, unsettled, "grid_worker", "gw-9")
    assert r.status_code == 403, "a grid worker records; a mediator reopens"
    got = await desk.incident(incident_id)
    assert got["status"] == "closed" and len(got["follow_ups"]) == 1, "nothing applied"

    r = await post(desk, path, unsettled, "mediator", "mediator-9")
    assert r.status_code == 201, r.text
    got = await desk.incident(incident_id)
    assert got["status"] == "reopened" and got["closed_at"] is None
    assert [(f["visited_by"], f["still_settled"]) for f in got["follow_ups"]] == [("gw-9", True), ("mediator-9", False)]
    assert [t["what"] for t in got["timeline"]][-3:] == ["follow_up_recorded", "follow_up_recorded", "transitioned"]
    assert (
        got["timeline"][-1]["detail"]["to_status"] == "reopened"
        and "又因漏水争吵" in got["timeline"][-1]["detail"]["reason"]
    )


async def test_fifty_disputes_all_closed_forty_nine_satisfied_give_100_and_98_percent(desk):
    n = 50
    codes = [f"JS95{i:02d}" for i in range(n)]
    await asyncio.gather(*(desk.household(c, f"金水小区10-{i // 10 + 1}-{i % 10 + 101}") for i, c in enumerate(codes)))
    state = await desk.reports(
        *({"kind": "dispute", "household_code": c, "reported_at": ago(hours=2)} for c in codes), sub="gw-10"
    )
    ids = [applied(state, i) for i in range(n)]
    assert len(set(ids)) == n
    gate = asyncio.Semaphore(8)

    async def settle(i: int, incident_id: str) -> None:
        async with gate:
            await close(desk, incident_id, satisfied=i != 0)

    await asyncio.gather(*(settle(i, x) for i, x in enumerate(ids)))
    r = await desk.http.get("/v1/stats/incidents", params={"by": "category"}, headers=desk.auth("community_admin"))
    assert r.status_code == 200, r.text
    total = r.json()["total"]
    assert (total["incidents"], total["closed"], total["rated"], total["satisfied"]) == (n, n, n, n - 1)
    assert total["closure_rate"] == 1.0 and total["satisfaction_rate"] == 0.98
    assert r.json()["groups"] == [{"category": "report:dispute", **total}]
