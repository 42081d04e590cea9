"""Several gateway processes serve the same feed: ids are RISK stream sequences, the same on every gateway, so an
officer whose gateway stops (SIGTERM) or dies (SIGKILL) reconnects to another with Last-Event-ID and gets every
later alert once, none missing, none repeated."""

from __future__ import annotations

import signal
from datetime import UTC, datetime

import httpx
import pytest

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .sse import SseClient

RAISED = "org.jinshui.risk.alert.raised.v1"

pytestmark = pytest.mark.timeout(120)


class Desk:
    def __init__(self, home: str) -> None:
        self.home = home

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    def stream(self, gateway: str, last_event_id: str | None = None) -> SseClient:
        token = issue_token(home=self.home, role="police", sub="po-1")
        return SseClient(f"{gateway}/v1/alerts/stream", token, last_event_id=last_event_id)

    async def urgent_visit(self, gateway: str, code: str) -> None:
        visit = {"household_code": code, "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
        headers = {**self.auth("grid_worker", "gw-1"), "Prefer": "wait=20"}
        async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
            r = await http.post("/v1/visits", json={"visits": [visit]}, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text


def raised(sse: SseClient) -> list[tuple[int, str]]:
    return [(int(e.id), e.json["data"]["household_code"]) for e in sse.alerts if e.json["type"] == RAISED]


def ids(sse: SseClient) -> list[int]:
    return [int(e.id) for e in sse.alerts]


async def test_an_officer_moves_to_another_gateway_and_misses_nothing_nor_sees_anything_twice(stack, service_env):
    a = await stack(services=("registry", "risk", "gateway"))
    # Gateway B: a second process of the same gateway, on its own port, in front of the same services.
    b = await stack(services=("gateway",), env_overrides={"REGISTRY_URL": a.url("registry"), "RISK_URL": a.url("risk")})
    gw_a, gw_b = a.url("gateway"), b.url("gateway")
    desk = Desk(service_env["JINSHUI_HOME"])
    admin = desk.auth("community_admin", "admin-1")
    async with httpx.AsyncClient(base_url=gw_a, timeout=20) as http:
        for path, body in (
            ("/v1/grids", {"code": "G01", "name": "网格一"}),
            ("/v1/grids", {"code": "G02", "name": "网格二"}),
            ("/v1/beats", {"code": "B1", "name": "警格一", "grids": ["G01"]}),
            ("/v1/beats", {"code": "B2", "name": "警格二", "grids": ["G02"]}),
            ("/v1/assignments", {"person": "po-1", "role": "officer", "area": "B1"}),
            *(
                ("/v1/households", {"code": f"H{i}", "address": f"金水小区{i}号", "grid": "G01", "beat": "B1"})
                for i in range(1, 9)
            ),
            ("/v1/households", {"code": "X1", "address": "另一小区", "grid": "G02", "beat": "B2"}),
        ):
            r = await http.post(path, json=body, headers=admin)
            assert r.status_code == 201, r.text

    # On A: two alerts of po-1's beat, one of another beat that the feed keeps from them.
    async with desk.stream(gw_a) as on_a:
        await desk.urgent_visit(gw_a, "H1")
        await desk.urgent_visit(gw_a, "X1")
        await desk.urgent_visit(gw_a, "H2")
        await eventually(lambda: [h for _, h in raised(on_a)] == ["H1", "H2"], what="H1 and H2 on gateway A")

        # SIGTERM: A ends the stream at once with a hint to reconnect, rather than hold it through its graceful
        # shutdown (10 s), and exits well within that.
        a.kill("gateway", signal.SIGTERM)
        await eventually(lambda: on_a.ended, timeout=5, what="gateway A ending the stream on SIGTERM")
        assert on_a.events[-1].event == "reconnect" and "Last-Event-ID" in on_a.events[-1].data
        assert await a.wait_exit("gateway", 5) is not None
        seen = list(on_a.alerts)

    # Raised while the officer is connected nowhere; they reconnect to B with the last id they saw.
    await desk.urgent_visit(gw_b, "H3")
    async with desk.stream(gw_b, last_event_id=seen[-1].id) as on_b:
        await eventually(lambda: [h for _, h in raised(on_b)] == ["H3"], what="H3 replayed by gateway B")
        await desk.urgent_visit(gw_b, "H4")
        await eventually(lambda: [h for _, h in raised(on_b)] == ["H3", "H4"], what="H4 live on gateway B")

        # A comes back; B dies with the stream open, and the officer moves back to A.
        await a.start_service("gateway")
        b.kill("gateway", signal.SIGKILL)
        await eventually(lambda: on_b.ended, what="the broken connection to gateway B")
        seen += on_b.alerts

    await desk.urgent_visit(gw_a, "H5")
    async with desk.stream(gw_a, last_event_id=seen[-1].id) as back_on_a:
        await eventually(lambda: [h for _, h in raised(back_on_a)] == ["H5"], what="H5 replayed by gateway A")
        await desk.urgent_visit(gw_a, "H6")
        await eventually(lambda: [h for _, h in raised(back_on_a)] == ["H5", "H6"], what="H6 live on gateway A")
        seen += back_on_a.alerts

    # The whole feed, read afresh from the start: what the officer saw across three connections is exactly it.
    async with desk.stream(gw_a, last_event_id="0") as whole:
        await eventually(lambda: len(raised(whole)) == 6, what="the whole feed of beat B1")
        await eventually(lambda: ids(whole)[-1] == int(seen[-1].id), what="the whole feed up to the last alert")
    assert [int(e.id) for e in seen] == ids(whole)
    assert [e.json["data"]["household_code"] for e in seen if e.json["type"] == RAISED] == [
        f"H{i}" for i in range(1, 7)
    ]
    assert all(e.json["data"]["beat"] == "B1" for e in seen)
