"""Hazards (隐患): a rectification deadline, re-inspection (复查), the overdue event its timer emits (also across a
restart of incidents), and risk rule 5 turning that event into an escalation alert for the desk."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import nats
import orjson
import pytest_asyncio

from jinshui.incidents.rules import rectification_due
from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .settle import caught_up
from .test_incidents_intake import PROBLEM, SERVICES, Desk, ago, applied, open_desk


@pytest_asyncio.fixture
async def desk(stack, service_env):
    d = await open_desk(stack, service_env)
    yield d
    await d.http.aclose()


def hazard(code: str, category: str = "falling_tiles", **extra) -> dict:
    return {
        "kind": "hazard",
        "household_code": code,
        "hazard_category": category,
        "reported_at": ago(minutes=10),
        **extra,
    }


async def inspect(desk: Desk, incident_id: str, role: str = "grid_worker", **body):
    return await desk.http.post(
        f"/v1/incidents/{incident_id}/inspections", json=body, headers=desk.auth(role, f"{role}-1")
    )


async def overdue_events(servers, prefix: str) -> list[dict]:
    nc = await nats.connect(servers.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(
            f"{prefix}.incidents.hazard.rectification_overdue.>", stream=f"{prefix.upper()}_INCIDENTS"
        )
        try:
            return [orjson.loads(m.data) for m in await sub.fetch(20, timeout=2)]
        except TimeoutError:
            return []
    finally:
        await nc.close()


async def test_a_hazard_is_resolved_only_after_a_re_inspection_finds_it_rectified_and_its_deadline_fires(
    desk, service_env, servers, stream_prefix
):
    await desk.household("JS8001", "金水小区8-1-101")
    report = hazard("JS8001", description="外墙瓷砖松动")
    incident_id = applied(await desk.reports(report))
    got = await desk.incident(incident_id)
    default = rectification_due("falling_tiles", datetime.fromisoformat(report["reported_at"]))
    assert got["hazard"]["category"] == "falling_tiles" and not got["hazard"]["overdue"]
    assert datetime.fromisoformat(got["hazard"]["rectify_by"]) == default, "three working days by default"
    assert [t["what"] for t in got["timeline"]] == ["opened", "deadline_set"]

    for to, role in (("accepted", "police"), ("assigned", "community_admin"), ("in_hand", "grid_worker")):
        assert (await desk.move(incident_id, to, role)).status_code == 200
    r = await desk.move(incident_id, "resolved", "grid_worker")
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM and r.json()["type"].endswith("not-rectified")

    r = await inspect(desk, incident_id, result="rectified", new_deadline_days=2)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.new_deadline"
    r = await inspect(desk, incident_id, role="mediator", result="rectified")
    assert r.status_code == 403, "mediators do not inspect hazards"
    r = await inspect(desk, incident_id, result="not_rectified", note="物业未处理", new_deadline_days=2)
    assert r.status_code == 201, r.text
    assert r.json()["result"] == "not_rectified" and r.json()["by"] == "grid_worker-1"
    new_deadline = datetime.fromisoformat(r.json()["new_deadline"])
    got = await desk.incident(incident_id)
    assert datetime.fromisoformat(got["hazard"]["rectify_by"]) == new_deadline
    assert [i["result"] for i in got["inspections"]] == ["not_rectified"]

    advance(service_env["JINSHUI_CLOCK_FILE"], (new_deadline - datetime.now(UTC)).total_seconds() + 3600)

    async def overdue():
        got = await desk.incident(incident_id)
        return got if got["hazard"]["overdue"] else None

    got = await eventually(overdue, timeout=30, interval=0.25, what="the rectification deadline to fire")
    fired = [t for t in got["timeline"] if t["what"] == "rectification_overdue"]
    assert len(fired) == 1 and fired[0]["actor"] == "system:deadlines"

    async def published():
        return await overdue_events(servers, stream_prefix) or None

    event = (await eventually(published, timeout=30, interval=0.5, what="the overdue event on INCIDENTS"))[0]
    assert event["type"] == "org.jinshui.incidents.hazard.rectification_overdue.v1"
    data = event["data"]
    assert data["incident_id"] == incident_id and data["household_code"] == "JS8001"
    assert (data["grid"], data["beat"], data["hazard_category"]) == ("G01", "B1", "falling_tiles")
    assert datetime.fromisoformat(data["deadline"]) == new_deadline

    r = await inspect(desk, incident_id, result="rectified", note="已清除松动瓷砖")
    assert r.status_code == 201, r.text
    r = await inspect(desk, incident_id, result="rectified")
    assert r.status_code == 409 and r.json()["type"].endswith("already-rectified")
    r = await desk.move(incident_id, "resolved", "grid_worker")
    assert r.status_code == 200, r.text
    assert r.json()["hazard"]["rectified_at"] is not None and r.json()["status"] == "resolved"


async def test_inspections_and_deadlines_only_for_hazards_and_only_ahead(desk):
    await desk.household("JS8101", "金水小区8-1-201")
    dispute = applied(
        await desk.reports({"kind": "dispute", "household_code": "JS8101", "reported_at": ago(minutes=5)})
    )
    r = await inspect(desk, dispute, result="rectified")
    assert r.status_code == 409 and r.json()["type"].endswith("not-a-hazard")
    r = await desk.http.post(
        "/v1/reports",
        json={"reports": [hazard("JS8101", rectification_deadline=ago(hours=1))]},
        headers=desk.auth("grid_worker", "gw-1"),
    )
    assert r.status_code == 422 and "later than reported_at" in r.text
    chosen = (datetime.now(UTC) + timedelta(days=20)).replace(microsecond=0)
    incident_id = applied(
        await desk.reports(hazard("JS8101", "blocked_fire_lane", rectification_deadline=chosen.isoformat()))
    )
    assert datetime.fromisoformat((await desk.incident(incident_id))["hazard"]["rectify_by"]) == chosen
    path = f"/v1/incidents/{incident_id}/rectification-deadline"
    r = await desk.http.post(path, json={"deadline": ago(hours=1), "reason": "x"}, headers=desk.auth("police"))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.deadline"
    r = await desk.http.post(path, json={"days": 1, "reason": "消防通道须当日清理"}, headers=desk.auth("police"))
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["hazard"]["rectify_by"]) < chosen
    assert [t["what"] for t in r.json()["timeline"]] == ["opened", "deadline_set", "deadline_set"]
    rectify_by = datetime.fromisoformat(r.json()["hazard"]["rectify_by"])
    pause = {"waiting_on": "物业公司", "reason": "等物业安排清运"}
    r = await desk.http.post(f"/v1/incidents/{incident_id}/pause", json=pause, headers=desk.auth("community_admin"))
    assert r.status_code == 200 and r.json()["paused"]["deadlines"], r.text
    r = await desk.http.post(
        f"/v1/incidents/{incident_id}/resume", json={"reason": "物业已回复"}, headers=desk.auth("community_admin")
    )
    assert r.status_code == 200, r.text
    moved = datetime.fromisoformat(r.json()["hazard"]["rectify_by"]) - rectify_by
    assert moved == timedelta(seconds=r.json()["paused_seconds"]) > timedelta(0), "the pause moved the deadline"


async def test_rule_5_a_hazard_past_its_deadline_while_incidents_is_down_raises_an_escalation_alert(stack, service_env):
    s = await stack(services=(*SERVICES, "risk"))
    desk = Desk(s.url("gateway"), service_env["JINSHUI_HOME"])
    desk.stack = s
    try:
        await desk.household("JS8201", "金水小区8-2-301")
        deadline = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
        report = hazard("JS8201", "basement_misuse", rectification_deadline=deadline.isoformat())
        incident_id = applied(await desk.reports(report))

        async def alerts() -> list[dict]:
            r = await desk.http.get(
                "/v1/alerts", params={"rule": "hazard-rectification-overdue"}, headers=desk.auth("police")
            )
            assert r.status_code == 200, r.text
            return r.json()["alerts"]

        await caught_up(s)  # risk has taken the report's events: no alert yet, because the deadline is ahead
        assert await alerts() == []
        s.kill("incidents", signal.SIGTERM)
        assert await s.wait_exit("incidents", 30) is not None
        advance(service_env["JINSHUI_CLOCK_FILE"], 3 * 3600)
        await s.start_service("incidents", timeout=60)

        alert = (await eventually(alerts, timeout=60, interval=0.5, what="the rule 5 alert"))[0]
        assert alert["level"] == "MEDIUM" and alert["status"] == "raised" and alert["beat"] == "B1"
        assert alert["household_code"] == "JS8201" and incident_id in alert["explanation"]
        assert "basement_misuse" in alert["explanation"]
        assert alert["evidence"][0]["type"] == "org.jinshui.incidents.hazard.rectification_overdue.v1"
    finally:
        await desk.http.aclose()
