"""The ops team's view through the gateway: readiness, lag and backlog per service, dead letters, a service down."""

from __future__ import annotations

import signal

import httpx
import nats

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token


async def test_ops_status_shows_every_service_the_dlq_and_a_service_that_is_down(stack, service_env, servers):
    s = await stack()
    ops = {"Authorization": f"Bearer {issue_token(home=service_env['JINSHUI_HOME'], role='ops')}"}
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=15) as gw:
        status = (await gw.get("/v1/ops/status", headers=ops)).json()
        assert status["ready"] is True
        by_name = {x["service"]: x for x in status["services"]}
        assert set(by_name) == {"gateway", "registry", "incidents", "risk"}
        registry = by_name["registry"]
        assert registry["version"] and registry["uptime_seconds"] >= 0
        assert "registry-intake" in [c["durable"] for c in registry["consumers"]]
        assert all("pending" in c and "awaiting_ack" in c for c in registry["consumers"])
        assert registry["outbox"]["backlog"] == 0
        assert status["dlq"] == 0

        # A message no consumer can read: it must show up as a dead letter.
        nc = await nats.connect(servers.nats_url)
        prefix = service_env["JINSHUI_STREAM_PREFIX"]
        await nc.jetstream().publish(f"{prefix}.intake.visit.submitted", b"not an event")
        await nc.close()

        async def dead_letters():
            return (await gw.get("/v1/ops/status", headers=ops)).json()["dlq"]

        assert await eventually(dead_letters, what="a dead letter counted") == 1

        s.kill("risk", signal.SIGKILL)
        await s.wait_exit("risk", 10)
        status = (await gw.get("/v1/ops/status", headers=ops)).json()
        assert status["ready"] is False
        risk = next(x for x in status["services"] if x["service"] == "risk")
        assert risk["ready"] is False and "did not answer" in risk["last_error"]

        metrics = (await httpx.AsyncClient().get(s.url("registry") + "/metrics")).text
        assert 'jinshui_consumer_pending{consumer="registry-intake"}' in metrics
        assert "jinshui_outbox_backlog" in metrics
