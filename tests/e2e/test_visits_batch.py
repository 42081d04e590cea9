"""Visits travel as batches: the registry publishes one visits.recorded event per beat of a submission, and each
consumer reads every visit out of it. A visit is named by the id its own visit.recorded event carries, so that
a deployment publishing both (while consumers move over) still alerts, and opens a report, once per visit."""

from __future__ import annotations

from datetime import datetime

from jinshui.contracts.registry import visit_recorded_id
from jinshui.kit.testing import eventually

from .settle import caught_up
from .test_contract_v2 import stream
from .test_walking_skeleton import Gateway, codes

BATCH = "org.jinshui.registry.visits.recorded.v1"
V1 = "org.jinshui.registry.visit.recorded.v1"
RAISED = "org.jinshui.risk.alert.raised.v1"


async def _setup(stack, service_env, **env):
    s = await stack(env_overrides=env) if env else await stack()
    gw = Gateway(s.url("gateway"), service_env["JINSHUI_HOME"])
    b1, b2 = codes(3, "P"), codes(2, "Q")
    await gw.register_households(b1, beat="B1")
    await gw.register_households(b2, beat="B2")
    return s, gw, b1, b2


async def test_a_submission_over_two_beats_is_two_events_carrying_every_visit_in_order(
    stack, service_env, servers, stream_prefix
):
    s, gw, b1, b2 = await _setup(stack, service_env)
    try:
        # Interleaved beats: each event keeps its beat's visits in submission order.
        order = [b1[0], b2[0], b1[1], b2[1], b1[2]]
        sid = await gw.post_visits(order, concerns=())
        await caught_up(s)
        registry = await stream(servers.nats_url, f"{stream_prefix.upper()}_REGISTRY")
        assert not [e for _, e in registry if e["type"] == V1], "by default no visit is published alone"
        batches = {subject.removeprefix(stream_prefix + "."): e for subject, e in registry if e["type"] == BATCH}
        assert set(batches) == {"registry.visits.recorded.B1", "registry.visits.recorded.B2"}
        one, two = batches["registry.visits.recorded.B1"]["data"], batches["registry.visits.recorded.B2"]["data"]
        assert [v["household_code"] for v in one["visits"]] == [b1[0], b1[1], b1[2]]
        assert [v["record_index"] for v in one["visits"]] == [0, 2, 4]
        assert [v["household_code"] for v in two["visits"]] == [b2[0], b2[1]]
        assert one["submission_id"] == two["submission_id"] == sid and (one["beat"], two["beat"]) == ("B1", "B2")
        assert all(v["visited_by"] == {"sub": "gw-1", "role": "grid_worker"} for v in one["visits"] + two["visits"])
        # Risk kept every visit of both events: each household's last visit is the one just made (rule 7 reads it).
        visited = {v["household_code"]: v["visited_at"] for v in one["visits"] + two["visits"]}
        for code in order:
            r = await gw.http.get(f"/v1/profiles/households/{code}", headers=gw.auth("police"))
            assert r.status_code == 200, r.text
            assert datetime.fromisoformat(r.json()["last_visited_at"]) == datetime.fromisoformat(visited[code])
    finally:
        await gw.http.aclose()


async def test_visits_published_both_alone_and_in_batches_alert_and_open_a_report_once_each(
    stack, service_env, servers, stream_prefix
):
    s, gw, b1, b2 = await _setup(stack, service_env, VISIT_RECORDED_VERSIONS="1,batch")
    try:
        households = b1 + b2
        await gw.post_visits(households, concerns=("urgent", "dispute"))
        await caught_up(s)
        registry = await stream(servers.nats_url, f"{stream_prefix.upper()}_REGISTRY")
        alone = {e["data"]["household_code"]: e["id"] for _, e in registry if e["type"] == V1}
        batched = [v for _, e in registry if e["type"] == BATCH for v in e["data"]["visits"]]
        assert sorted(alone) == sorted(households) and len(batched) == len(households)
        # The id a batched visit is read under is the id of the same visit's own event.
        assert {v["household_code"]: visit_recorded_id(v["visit_id"]) for v in batched} == alone

        risk = await stream(servers.nats_url, f"{stream_prefix.upper()}_RISK")
        raised = [e["data"] for _, e in risk if e["type"] == RAISED]
        assert sorted(a["household_code"] for a in raised) == sorted(households), "one alert per urgent visit"
        for a in raised:
            assert [(x["event_id"], x["type"]) for x in a["evidence"]] == [(alone[a["household_code"]], V1)]
        evidence_added = [e for _, e in risk if e["type"].endswith("alert.evidence_added.v1")]
        assert evidence_added == [], "the second copy of a visit adds no evidence"

        async def reports():
            r = await gw.http.get("/v1/incidents", headers=gw.auth("police"), params={"limit": 100})
            items = r.json()["items"]
            return items if len(items) >= len(households) else None

        items = await eventually(reports, what="a report per disputed visit")
        assert sorted(i["household_code"] for i in items) == sorted(households), "one report per visit, not two"
        assert await stream(servers.nats_url, f"{stream_prefix.upper()}_DLQ") == []
    finally:
        await gw.http.aclose()
