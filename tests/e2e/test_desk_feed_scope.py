"""The alert feed shows each officer the alerts of their own beat; an assignment made while they are connected
applies from the next alert on, and a resumed stream is filtered the same way."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest_asyncio

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .sse import SseClient

RAISED = "org.jinshui.risk.alert.raised.v1"


class Beats:
    def __init__(self, s, env) -> None:
        self.s, self.home = s, env["JINSHUI_HOME"]
        self.http = httpx.AsyncClient(base_url=s.url("gateway"), timeout=20)

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}

    async def post(self, path: str, body: dict, status: int = 201) -> dict:
        r = await self.http.post(path, json=body, headers=self.auth("community_admin", "admin-1"))
        assert r.status_code == status, r.text
        return r.json()

    def stream(self, officer: str, last_event_id: str | None = None) -> SseClient:
        url = self.s.url("gateway") + "/v1/alerts/stream"
        return SseClient(url, issue_token(home=self.home, role="police", sub=officer), last_event_id=last_event_id)

    async def urgent_visit(self, code: str) -> None:
        visit = {"household_code": code, "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
        headers = {**self.auth("grid_worker", "gw-1"), "Prefer": "wait=20"}
        r = await self.http.post("/v1/visits", json={"visits": [visit]}, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text


@pytest_asyncio.fixture
async def beats(stack, service_env):
    s = await stack(services=("registry", "risk", "gateway"))
    b = Beats(s, service_env)
    for grid, beat in (("G01", "B1"), ("G02", "B2")):
        await b.post("/v1/grids", {"code": grid, "name": f"网格{grid}"})
        await b.post("/v1/beats", {"code": beat, "name": f"警格{beat}", "grids": [grid]})
    for code, grid, beat in (("H1", "G01", "B1"), ("H2", "G02", "B2"), ("H3", "G02", "B2")):
        await b.post("/v1/households", {"code": code, "address": f"金水小区{code}", "grid": grid, "beat": beat})
    await b.post("/v1/assignments", {"person": "po-1", "role": "officer", "area": "B1"})
    await b.post("/v1/assignments", {"person": "po-2", "role": "officer", "area": "B2"})
    yield b
    await b.http.aclose()


def households(sse: SseClient) -> list[str]:
    return [e.json["data"]["household_code"] for e in sse.alerts if e.json["type"] == RAISED]


async def test_each_officer_sees_the_alerts_of_their_beat(beats):
    async with (
        beats.stream("po-1") as one,
        beats.stream("po-2") as two,
        beats.stream("po-9") as unassigned,
    ):
        await beats.urgent_visit("H1")
        await beats.urgent_visit("H2")
        await eventually(lambda: sorted(households(unassigned)) == ["H1", "H2"], what="both alerts, unnarrowed")
        await eventually(lambda: households(two) == ["H2"], what="beat B2's alert for po-2")
        # Each stream is fed on its own: po-1's may be behind the others'. H2 comes after H1 on every stream.
        await eventually(lambda: "H1" in households(one), what="beat B1's alert for po-1")
        assert households(one) == ["H1"], "po-1 (beat B1) sees nothing of beat B2"
        assert all(e.json["data"]["beat"] == "B1" for e in one.alerts)
        first_id = one.alerts[0].id

        # po-1 now also covers B2: a resumed stream replays B2's alert, and the open one takes the next.
        await beats.post("/v1/assignments", {"person": "po-1", "role": "officer", "area": "B2"})

        async def resumed_with_b2() -> bool:
            async with beats.stream("po-1", last_event_id="0") as again:
                await eventually(lambda: "H1" in households(again), what="the replay")
                return sorted(households(again)) == ["H1", "H2"]

        await eventually(resumed_with_b2, what="beat B2's alert replayed to po-1 once assigned there")
        await beats.urgent_visit("H3")
        await eventually(lambda: households(one) == ["H1", "H3"], what="H3 on po-1's open stream")
        await eventually(lambda: households(two) == ["H2", "H3"], what="H3 on po-2's stream")
        assert one.alerts[0].id == first_id and int(one.alerts[-1].id) > int(first_id)
