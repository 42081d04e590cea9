"""Risk through the gateway: the alert lifecycle on the desk's stream, escalation by the clock, gate sightings
matched against watch-lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually, id_number
from jinshui.kit.tokens import issue_token

from .sse import SseClient

PROBLEM = "application/problem+json"


class Desk:
    def __init__(self, stack, env) -> None:
        self.stack, self.env, self.home = stack, env, env["JINSHUI_HOME"]
        self.http = httpx.AsyncClient(base_url=stack.url("gateway"), timeout=20)

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    def stream(self) -> SseClient:
        return SseClient(self.stack.url("gateway") + "/v1/alerts/stream", issue_token(home=self.home, role="police"))

    async def household(self, code: str) -> None:
        body = {"code": code, "address": "金水小区1-1-101", "grid": "G01", "beat": "B1"}
        r = await self.http.post("/v1/households", json=body, headers=self.auth("community_admin"))
        assert r.status_code == 201, r.text

    async def urgent_visit(self, code: str) -> None:
        visit = {"household_code": code, "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
        r = await self.http.post(
            "/v1/visits", json={"visits": [visit]}, headers={**self.auth("grid_worker"), "Prefer": "wait=20"}
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text


@pytest_asyncio.fixture
async def desk(stack, service_env):
    s = await stack(services=("registry", "risk", "gateway"), env_overrides={"ESCALATE_AFTER_SECONDS": "120"})
    d = Desk(s, service_env)
    yield d
    await d.http.aclose()


def of_type(sse: SseClient, verb: str) -> list[dict]:
    return [e.json for e in sse.alerts if e.json["type"] == f"org.jinshui.risk.alert.{verb}.v1"]


async def test_an_alert_is_acknowledged_resolved_and_then_refuses_to_move(desk):
    await desk.household("A1")
    async with desk.stream() as sse:
        await desk.urgent_visit("A1")
        raised = (await eventually(lambda: of_type(sse, "raised"), what="raised"))[0]["data"]
        alert_id = raised["alert_id"]
        police = desk.auth("police", sub="officer-3")
        r = await desk.http.post(f"/v1/alerts/{alert_id}/acknowledge", json={}, headers=police)
        assert r.status_code == 200 and r.json()["status"] == "acknowledged"
        assert r.json()["acknowledged_by"] == "officer-3"
        ack = (await eventually(lambda: of_type(sse, "acknowledged"), what="acknowledged on the feed"))[0]
        assert ack["data"]["by"] == "officer-3" and ack["data"]["beat"] == "B1"

        r = await desk.http.post(f"/v1/alerts/{alert_id}/resolve", json={}, headers=police)
        assert r.status_code == 422, "resolving needs a reason"
        r = await desk.http.post(
            f"/v1/alerts/{alert_id}/resolve", json={"reason": "visited, family calm"}, headers=police
        )
        assert r.status_code == 200 and r.json()["status"] == "resolved"
        await eventually(lambda: of_type(sse, "resolved"), what="resolved on the feed")

        r = await desk.http.post(f"/v1/alerts/{alert_id}/acknowledge", json={}, headers=police)
        assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
        assert r.json()["status_now"] == "resolved" and r.json()["allowed"] == []

        detail = (await desk.http.get(f"/v1/alerts/{alert_id}", headers=police)).json()
        assert [h["what"] for h in detail["history"]] == ["raised", "acknowledged", "resolved"]
        assert detail["history"][-1]["reason"] == "visited, family calm"


async def test_one_open_alert_per_rule_and_subject_gathers_further_evidence(desk):
    await desk.household("A2")
    async with desk.stream() as sse:
        await desk.urgent_visit("A2")
        first = (await eventually(lambda: of_type(sse, "raised"), what="raised"))[0]["data"]["alert_id"]
        await desk.urgent_visit("A2")
        added = await eventually(lambda: of_type(sse, "evidence_added"), what="evidence appended")
        assert added[0]["data"]["alert_id"] == first
        assert len(of_type(sse, "raised")) == 1
        r = await desk.http.post(
            f"/v1/alerts/{first}/dismiss", json={"reason": "false alarm"}, headers=desk.auth("police")
        )
        assert r.status_code == 200
        await desk.urgent_visit("A2")  # the old one is closed: a new alert
        raised = await eventually(lambda: len(of_type(sse, "raised")) == 2 and of_type(sse, "raised"), what="new")
        assert raised[1]["data"]["alert_id"] != first
    listed = (await desk.http.get("/v1/alerts", params={"status": "dismissed"}, headers=desk.auth("police"))).json()
    assert [a["id"] for a in listed["alerts"]] == [first]
    assert len(listed["alerts"][0]["evidence"]) == 2


async def test_a_high_alert_left_unacknowledged_escalates_when_the_clock_passes(desk):
    await desk.household("A3")
    async with desk.stream() as sse:
        await desk.urgent_visit("A3")
        alert_id = (await eventually(lambda: of_type(sse, "raised"), what="raised"))[0]["data"]["alert_id"]
        advance(desk.env["JINSHUI_CLOCK_FILE"], 60)
        assert not of_type(sse, "escalated")
        advance(desk.env["JINSHUI_CLOCK_FILE"], 120)
        escalated = (await eventually(lambda: of_type(sse, "escalated"), timeout=30, what="escalation"))[0]
        assert escalated["data"]["alert_id"] == alert_id and escalated["data"]["attention"] == 1
        assert escalated["data"]["reason"] == "not acknowledged in time"


async def test_gate_sightings_of_watch_listed_plates_and_persons_raise_alerts(desk):
    police = desk.auth("police", sub="officer-1")
    r = await desk.http.post(
        "/v1/gates", json={"code": "N1", "name": "北门", "grid": "G01", "beat": "B1"}, headers=police
    )
    assert r.status_code == 201, r.text
    wanted = id_number("37050219800101123")
    r = await desk.http.post(
        "/v1/watchlists",
        json={"kind": "plate", "plate": "鲁E·12345", "level": "HIGH", "reason": "stolen vehicle"},
        headers=police,
    )
    assert r.status_code == 201, r.text
    r = await desk.http.post(
        "/v1/watchlists",
        json={"kind": "person", "id_number": wanted, "level": "MEDIUM", "reason": "absconded from correction"},
        headers=police,
    )
    assert r.status_code == 201, r.text
    assert r.json()["masked"] == wanted[:6] + "********" + wanted[-4:]
    assert wanted not in (await desk.http.get("/v1/watchlists", headers=police)).text

    now = datetime.now(UTC)
    sightings = [{"gate": "N1", "seen_at": now.isoformat(), "plate": f"鲁E{i:05d}"} for i in range(100)]
    sightings[40]["plate"] = "鲁e 12345"  # the same plate, written another way
    sightings[41] = {"gate": "N1", "seen_at": now.isoformat(), "id_number": wanted, "confidence": 0.93}
    sightings[42]["gate"] = "NOWHERE"
    sightings[43]["seen_at"] = (now + timedelta(hours=2)).isoformat()
    async with desk.stream() as sse:
        r = await desk.http.post(
            "/v1/sightings",
            json={"sightings": sightings},
            headers={**desk.auth("gate_system", sub="gate-n1"), "Idempotency-Key": "n1-batch-1", "Prefer": "wait=20"},
        )
        assert r.status_code == 200, r.text
        outcomes = r.json()["outcomes"]
        assert outcomes[42] == {"index": 42, "status": "rejected", "reason": "unknown gate NOWHERE"}
        assert outcomes[43]["status"] == "rejected" and "in the future" in outcomes[43]["reason"]
        assert r.json()["applied"] == 98
        raised = await eventually(lambda: len(of_type(sse, "raised")) >= 2 and of_type(sse, "raised"), what="2 alerts")
    by_level = {a["data"]["level"]: a["data"] for a in raised}
    assert set(by_level) == {"HIGH", "MEDIUM"} and len(raised) == 2
    assert "stolen vehicle" in by_level["HIGH"]["explanation"] and "北门" in by_level["HIGH"]["explanation"]
    assert wanted not in str(raised)


async def test_a_sighting_needs_something_seen_and_a_watch_entry_its_key(desk):
    r = await desk.http.post(
        "/v1/sightings",
        json={"sightings": [{"gate": "N1", "seen_at": datetime.now(UTC).isoformat()}]},
        headers={**desk.auth("gate_system"), "Idempotency-Key": "x"},
    )
    assert r.status_code == 422 and "plate or an id_number" in r.json()["errors"][0]["reason"]
    r = await desk.http.post(
        "/v1/watchlists",
        json={"kind": "person", "plate": "鲁E1", "level": "HIGH", "reason": "r"},
        headers=desk.auth("police"),
    )
    assert r.status_code == 422


async def test_a_rule_file_with_an_error_leaves_the_old_rules_in_force(stack, service_env, tmp_path):
    from jinshui.risk.rules import DEFAULT_RULES, parse

    shipped = parse(DEFAULT_RULES.read_text(encoding="utf-8")).version
    v, v_next = f"version: {shipped}", f"version: {shipped + 1}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEFAULT_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    s = await stack(services=("registry", "risk", "gateway"), env_overrides={"RULES_FILE": str(rules)})
    desk = Desk(s, service_env)
    admin = desk.auth("community_admin")
    await desk.household("R1")
    await desk.household("R2")
    rules.write_text(rules.read_text().replace(v, v_next).replace("level: HIGH", "level: URGENT"))
    r = await desk.http.post("/v1/rules/reload", headers=admin)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "rules.0.effects.0.alert.level" in r.json()["detail"] and r.json()["version_in_force"] == shipped
    async with desk.stream() as sse:
        await desk.urgent_visit("R1")
        raised = (await eventually(lambda: of_type(sse, "raised"), what="alert under the old rules"))[0]["data"]
        assert raised["level"] == "HIGH" and f"rules v{shipped}" in raised["explanation"]

        extra = """
  - id: welfare-follow-up
    events: [org.jinshui.registry.visit.recorded.v1]
    when:
      - {field: concerns, contains: welfare_need}
    effects:
      - alert: {level: LOW, subject: household_code, explanation: "welfare need at {household_code}"}
"""
        rules.write_text(DEFAULT_RULES.read_text(encoding="utf-8").replace(v, v_next) + extra)
        r = await desk.http.post("/v1/rules/reload", headers=admin)
        assert r.status_code == 200 and r.json()["version"] == shipped + 1
        visit = {"household_code": "R2", "visited_at": datetime.now(UTC).isoformat(), "concerns": ["welfare_need"]}
        r = await desk.http.post(
            "/v1/visits", json={"visits": [visit]}, headers={**desk.auth("grid_worker"), "Prefer": "wait=20"}
        )
        assert r.status_code == 200
        low = await eventually(
            lambda: [a for a in of_type(sse, "raised") if a["data"]["rule"] == "welfare-follow-up"], what="new rule"
        )
        assert low[0]["data"]["level"] == "LOW" and f"rules v{shipped + 1}" in low[0]["data"]["explanation"]
    shown = (await desk.http.get("/v1/rules", headers=desk.auth("police"))).json()
    assert shown["version"] == shipped + 1 and shown["last_error"] is None
    await desk.http.aclose()


async def test_the_loop_closes_itself_alert_task_visit_task_done_alert_resolved(desk):
    admin = desk.auth("community_admin")
    for path, body in (
        ("/v1/beats", {"code": "B1", "name": "金水警格"}),
        ("/v1/grids", {"code": "G01", "name": "第一网格", "beat": "B1"}),
        ("/v1/assignments", {"person": "gw-9", "role": "grid_worker", "area": "G01"}),
    ):
        r = await desk.http.post(path, json=body, headers=admin)
        assert r.status_code == 201, r.text
    await desk.household("L1")
    worker = {**desk.auth("grid_worker", sub="gw-9"), "Prefer": "wait=20"}
    async with desk.stream() as sse:
        visit = {"household_code": "L1", "visited_at": datetime.now(UTC).isoformat(), "concerns": ["welfare_need"]}
        r = await desk.http.post("/v1/visits", json={"visits": [visit]}, headers=worker)
        assert r.status_code == 200, r.text
        raised = (await eventually(lambda: of_type(sse, "raised"), what="welfare alert"))[0]["data"]
        assert raised["rule"] == "welfare-need" and raised["level"] == "LOW"

        async def open_tasks(sub: str):
            r = await desk.http.get("/v1/tasks", headers=desk.auth("grid_worker", sub=sub))
            return r.json()["tasks"]

        tasks = await eventually(lambda: open_tasks("gw-9"), what="the grid worker's task")
        assert tasks[0]["assignee"] == "gw-9" and tasks[0]["alert_id"] == raised["alert_id"]
        assert tasks[0]["title"] == "Follow up the welfare need at household L1"
        assert await open_tasks("gw-other") == [], "a grid worker sees only their grids' tasks"

        visit = {"household_code": "L1", "visited_at": datetime.now(UTC).isoformat()}
        r = await desk.http.post("/v1/visits", json={"visits": [visit]}, headers=worker)
        assert r.status_code == 200
        resolved = (await eventually(lambda: of_type(sse, "resolved"), what="alert resolved by the visit"))[0]
        assert resolved["data"]["alert_id"] == raised["alert_id"] and resolved["data"]["by"] == "gw-9"
    assert await open_tasks("gw-9") == []
    done = (await desk.http.get("/v1/tasks", params={"status": "done"}, headers=desk.auth("community_admin"))).json()
    assert [t["id"] for t in done["tasks"]] == [tasks[0]["id"]]
