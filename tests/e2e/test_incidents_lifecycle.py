"""An incident followed to closure: moves by role, mediation (调解), satisfaction, manual links, deadlines (督办)."""

from __future__ import annotations

import signal

import nats
import orjson
import pytest_asyncio

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .settle import caught_up
from .test_incidents_intake import PROBLEM, Desk, ago, applied, call, open_desk


@pytest_asyncio.fixture
async def desk(stack, service_env):
    d = await open_desk(stack, service_env)
    yield d
    await d.http.aclose()


async def _dispute(desk: Desk, code: str) -> str:
    await desk.household(code, f"金水小区7-1-{code[-3:]}")
    return applied(
        await desk.reports({"kind": "dispute", "household_code": code, "reported_at": ago(minutes=10)}, sub="gw-7")
    )


async def test_a_dispute_goes_through_mediation_to_closure_with_satisfaction_and_counts_in_the_statistics(desk):
    incident_id = await _dispute(desk, "JS7001")
    for to, role in (("accepted", "mediator"), ("assigned", "community_admin"), ("in_mediation", "mediator")):
        r = await desk.move(
            incident_id, to, role, sub=f"{role}-1", **({"assignee": "mediator-1"} if to == "assigned" else {})
        )
        assert r.status_code == 200, r.text
    mediation = {
        "mediators": ["mediator-1", "金水大妈-王"],
        "method": "homely",
        "held_at": ago(minutes=1),
        "outcome": "agreed",
        "agreement": "楼上修好管道，赔偿楼下500元",
    }
    r = await desk.http.post(f"/v1/incidents/{incident_id}/mediations", json=mediation, headers=desk.auth("mediator"))
    assert r.status_code == 201, r.text
    r = await desk.move(incident_id, "resolved", "mediator")
    assert r.status_code == 200, r.text
    r = await desk.move(incident_id, "closed", "mediator", satisfaction={"satisfied": True, "score": 5})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "closed" and got["satisfied"] is True and got["assignee"] == "mediator-1"
    assert got["mediations"][0]["method"] == "homely" and got["mediations"][0]["outcome"] == "agreed"
    assert [t["what"] for t in got["timeline"]] == [
        "opened",
        *["transitioned"] * 3,
        "mediation_recorded",
        *["transitioned"] * 2,
        "satisfaction_recorded",
    ]
    assert got["timeline"][1]["actor"] == "mediator-1" and got["timeline"][1]["detail"]["reason"]
    assert all(d["fired_at"] is None for d in got["deadlines"]), "closing settles every deadline"

    other = await _dispute(desk, "JS7002")  # still open: the closure rate is one of two
    r = await desk.http.get("/v1/stats/incidents", params={"by": "category"}, headers=desk.auth("community_admin"))
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["total"]["incidents"] == 2 and stats["total"]["closed"] == 1
    assert stats["total"]["closure_rate"] == 0.5 and stats["total"]["satisfaction_rate"] == 1.0
    assert stats["groups"] == [{"category": "report:dispute", **stats["total"]}]
    assert other != incident_id


async def test_moves_not_allowed_from_the_state_or_for_the_role_are_refused_with_what_is_allowed(desk):
    incident_id = await _dispute(desk, "JS7101")
    r = await desk.move(incident_id, "closed", "mediator")
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert r.json()["allowed"] == ["accepted", "escalated"] and r.json()["status_now"] == "reported"
    r = await desk.move(incident_id, "accepted", "grid_worker")
    assert r.status_code == 403 and r.json()["allowed"] == ["escalated"]
    r = await desk.http.post(
        f"/v1/incidents/{incident_id}/satisfaction", json={"satisfied": False}, headers=desk.auth("mediator")
    )
    assert r.status_code == 409 and "recorded at closing" in r.json()["detail"]
    r = await desk.http.post(
        f"/v1/incidents/{incident_id}/mediations",
        json={"mediators": ["m"], "method": "shouting", "held_at": ago(minutes=1), "outcome": "agreed"},
        headers=desk.auth("mediator"),
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.method"
    got = await desk.incident(incident_id)
    assert got["status"] == "reported" and [t["what"] for t in got["timeline"]] == ["opened"], "nothing applied"


async def test_a_mediator_links_and_unlinks_sources_by_hand_with_a_reason(desk, servers, stream_prefix):
    first = await _dispute(desk, "JS7201")
    await desk.household("JS7202", "金水小区8-1-202")
    second = applied(await desk.police_calls(call("110-7202", household_code="JS7202")))
    assert first != second
    source_id = (await desk.incident(second))["sources"][0]["id"]
    r = await desk.http.post(
        f"/v1/incidents/{first}/sources",
        json={"source_id": source_id, "reason": "同一家人的纠纷，报警时说错了门牌"},
        headers=desk.auth("mediator", "mediator-1"),
    )
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["sources"]][1] == source_id
    assert r.json()["sources"][1]["match"] == {
        "fields": ["manual"],
        "score": 1.0,
        "by": "mediator-1",
        "note": "同一家人的纠纷，报警时说错了门牌",
        "matched_source_id": None,
    }
    assert (await desk.http.get(f"/v1/incidents/{second}", headers=desk.auth("police"))).status_code == 404
    # The link says where the incident is, so that rules (rule 1) can place an alert and a task from it: its event
    # is published a moment after the answer (the outbox relay), so the stream is read once the outbox is.
    await caught_up(desk.stack)
    linked = [
        e["data"]
        for e in await _incidents_events(servers, stream_prefix, "incidents.incident.source_linked.>")
        if e["data"]["reason"]["fields"] == ["manual"]
    ]
    assert [(d["household_code"], d["grid"], d["beat"]) for d in linked] == [("JS7201", "G01", "B1")]
    r = await desk.http.post(
        f"/v1/incidents/{first}/sources/{source_id}/unlink",
        json={"reason": "不是同一件事"},
        headers=desk.auth("police"),
    )
    assert r.status_code == 200, r.text
    split = await desk.incident(r.json()["new_incident_id"])
    assert [s["id"] for s in split["sources"]] == [source_id]
    assert len(r.json()["incident"]["sources"]) == 1


async def _incidents_events(servers, prefix: str, subject: str = "incidents.deadline.>") -> list[dict]:
    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{prefix}.{subject}", stream=f"{prefix.upper()}_INCIDENTS")
        try:
            msgs = await sub.fetch(50, timeout=2)
        except TimeoutError:
            return []
        return [orjson.loads(m.data) for m in msgs]
    finally:
        await nc.close()


async def test_a_deadline_that_passes_while_incidents_is_down_still_fires_after_restart(
    desk, service_env, servers, stream_prefix
):
    await desk.household("JS7301", "金水小区9-1-301")
    incident_id = applied(await desk.police_calls(call("110-7301", household_code="JS7301", category="fire")))
    assert (await desk.incidents(overdue="true"))["items"] == []
    desk.stack.kill("incidents", signal.SIGTERM)
    assert await desk.stack.wait_exit("incidents", 30) is not None
    advance(service_env["JINSHUI_CLOCK_FILE"], 20 * 60)  # a fire call must be accepted within 15 minutes
    await desk.stack.start_service("incidents", timeout=60)

    async def overdue():
        items = (await desk.incidents(overdue="true"))["items"]
        return items if items else None

    items = await eventually(overdue, timeout=60, interval=0.25, what="the overdue incident")
    assert [i["id"] for i in items] == [incident_id]
    got = await desk.incident(incident_id)
    fired = [(t["what"], t["detail"]["deadline"]) for t in got["timeline"] if t["actor"] == "system:deadlines"]
    assert fired == [("due_soon", "accept"), ("overdue", "accept")]

    await caught_up(desk.stack)  # every deadline event published: a third (a deadline fired twice) would be there

    async def published():
        events = await _incidents_events(servers, stream_prefix)
        return events if len(events) >= 2 else None

    events = await eventually(published, timeout=30, interval=0.5, what="deadline events on INCIDENTS")
    assert [e["type"] for e in events] == [
        "org.jinshui.incidents.deadline.due_soon.v1",
        "org.jinshui.incidents.deadline.overdue.v1",
    ]
    assert events[1]["data"]["incident_id"] == incident_id and events[1]["data"]["status"] == "reported"
