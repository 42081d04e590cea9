"""A contract's next version on one real event: the registry publishes visit.recorded v2 beside v1 while consumers
move over (proto/CONTRACTS.md). Risk, still on v1, keeps raising alerts from v1 and never sees v2 as an error;
incidents, upgraded, takes either and applies each visit once; once v2 alone is published, incidents goes on
from v2."""

from __future__ import annotations

import nats
import orjson

from jinshui.kit.testing import eventually

from .settle import caught_up
from .test_walking_skeleton import Gateway, codes

V1 = "org.jinshui.registry.visit.recorded.v1"
V2 = "org.jinshui.registry.visit.recorded.v2"


async def stream(nats_url: str, name: str) -> list[tuple[str, dict]]:
    """Every message now in the stream: (subject, CloudEvent)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(name)
        out = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(name, seq)
            out.append((msg.subject, orjson.loads(msg.data)))
        return out
    finally:
        await nc.close()


async def test_v1_consumers_keep_working_while_v2_is_published_and_upgraded_ones_take_v2(
    stack, service_env, servers, stream_prefix
):
    s = await stack(env_overrides={"VISIT_RECORDED_VERSIONS": "1,2"})
    gw = Gateway(s.url("gateway"), service_env["JINSHUI_HOME"])
    registry_stream, risk_stream, dlq = (f"{stream_prefix.upper()}_{name}" for name in ("REGISTRY", "RISK", "DLQ"))
    try:
        both, later = codes(2, "V")
        await gw.register_households([both, later])
        await gw.post_visits([both], concerns=("urgent", "dispute"))

        async def alert_and_incident():
            risk = await stream(servers.nats_url, risk_stream)
            alerts = [e["data"] for _, e in risk if e["type"] == "org.jinshui.risk.alert.raised.v1"]
            found = await gw.http.get("/v1/incidents", params={"household_code": both}, headers=gw.auth("police"))
            items = found.json()["items"]
            return (alerts, items) if alerts and items else None

        await eventually(alert_and_incident, timeout=60, interval=0.2, what="alert and incident")
        # Read once every consumer has taken both versions: a second report (or alert) would come after the first.
        await caught_up(s)
        alerts, incidents = await alert_and_incident()
        visits = [
            (subject, e) for subject, e in await stream(servers.nats_url, registry_stream) if "visit" in e["type"]
        ]
        by_subject = {subject.removeprefix(stream_prefix + "."): e["type"] for subject, e in visits}
        assert by_subject == {f"registry.visit.recorded.{both}": V1, f"registry.visit.recorded_v2.{both}": V2}
        v1, v2 = (e["data"] for _, e in sorted(visits, key=lambda v: v[1]["type"]))
        assert v1["grid_worker"] == "gw-1" and "visited_by" not in v1
        assert v2["visited_by"] == {"sub": "gw-1", "role": "grid_worker"} and v2["people_present"] == 0
        # Risk, on v1: the alert's evidence is the v1 event, and v2 (on its stream filter too) was no error.
        [alert] = alerts
        assert alert["household_code"] == both and [e["type"] for e in alert["evidence"]] == [V1]
        # Incidents, upgraded: the same visit in both versions opened one report, not two.
        assert [i["category"] for i in incidents] == ["report:dispute"]

        # v2 only: the last step of the procedure, taken once no consumer needs v1 (risk here still would: it is
        # taken anyway to show the upgraded consumer working from v2 alone).
        s._env["VISIT_RECORDED_VERSIONS"] = "2"
        await s.start_service("registry")
        await gw.post_visits([later], concerns=("dispute",), sub="gw-2")

        async def from_v2():
            found = await gw.http.get("/v1/incidents", params={"household_code": later}, headers=gw.auth("police"))
            return found.json()["items"] or None

        [incident] = await eventually(from_v2, timeout=60, interval=0.2, what="the incident from v2")
        await caught_up(s)  # the stream and the DLQ read below are complete: no consumer has anything in flight
        detail = (await gw.http.get(f"/v1/incidents/{incident['id']}", headers=gw.auth("mediator"))).json()
        assert detail["sources"][0]["submitted_by"] == "gw-2"
        types = [e["type"] for _, e in await stream(servers.nats_url, registry_stream) if e.get("subject") == later]
        assert V2 in types and V1 not in types
        assert await stream(servers.nats_url, dlq) == [], "no consumer gave up on a message"
    finally:
        await gw.http.aclose()
