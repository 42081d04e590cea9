"""A grid visit becomes an alert on the police desk: four services as real processes, through the gateway only."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime

import httpx
import pytest_asyncio

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .sse import SseClient


class Gateway:
    """The gateway's public API as a client sees it."""

    def __init__(self, base: str, home: str) -> None:
        self.base, self.home = base, home
        self.http = httpx.AsyncClient(base_url=base, timeout=30)

    def token(self, role: str, sub: str | None = None) -> str:
        return issue_token(home=self.home, role=role, sub=sub)

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, sub)}"}

    async def register_households(self, codes: list[str], *, beat: str = "B1") -> None:
        headers = self.auth("community_admin")
        sem = asyncio.Semaphore(16)

        async def one(i: int, code: str) -> None:
            async with sem:
                body = {
                    "code": code,
                    "address": f"金水小区{i // 100 + 1}-{i % 4 + 1}-{i:03d}",
                    "grid": "G01",
                    "beat": beat,
                }
                r = await self.http.post("/v1/households", json=body, headers=headers)
                assert r.status_code == 201, r.text

        await asyncio.gather(*(one(i, c) for i, c in enumerate(codes)))

    async def post_visits(self, codes: list[str], *, concerns=("urgent",), sub: str = "gw-1") -> str:
        visits = [
            {"household_code": c, "visited_at": datetime.now(UTC).isoformat(), "concerns": list(concerns)}
            for c in codes
        ]
        r = await self.http.post("/v1/visits", json={"visits": visits}, headers=self.auth("grid_worker", sub))
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/submissions/{r.json()['submission_id']}"
        return r.json()["submission_id"]

    async def submission(self, sid: str, sub: str = "gw-1") -> dict:
        r = await self.http.get(f"/v1/submissions/{sid}", headers=self.auth("grid_worker", sub))
        assert r.status_code == 200, r.text
        return r.json()

    def stream(self) -> SseClient:
        return SseClient(self.base + "/v1/alerts/stream", self.token("police"))


@pytest_asyncio.fixture
async def gateway(stack, service_env):
    s = await stack()
    gw = Gateway(s.url("gateway"), service_env["JINSHUI_HOME"])
    gw.stack = s
    yield gw
    await gw.http.aclose()


def codes(n: int, prefix: str = "H") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


async def assert_exactly_once(gw: Gateway, sse: SseClient, households: list[str]) -> None:
    """Every household's alert arrived once: a marker alert sent last proves nothing more is on its way."""
    await eventually(lambda: len(sse.alerts) >= len(households), timeout=60, what="an alert per household")
    marker = "MARKER1"
    await gw.register_households([marker])
    await gw.post_visits([marker])
    await eventually(
        lambda: any(e.json["data"]["household_code"] == marker for e in sse.alerts), what="the marker's alert"
    )
    got = [e.json["data"]["household_code"] for e in sse.alerts]
    assert sorted(got) == sorted([*households, marker]), "each household's alert exactly once"
    ids = [int(e.id) for e in sse.alerts]
    assert ids == sorted(set(ids)), "SSE ids are increasing stream sequences, none repeated"


async def test_200_urgent_visits_give_exactly_200_alerts(gateway):
    households = codes(200)
    await gateway.register_households(households)
    async with gateway.stream() as sse:
        sids = [await gateway.post_visits(households[i : i + 25]) for i in range(0, 200, 25)]
        await assert_exactly_once(gateway, sse, households)
    for sid in sids:
        state = await eventually(lambda sid=sid: _settled(gateway, sid), what="settled submission")
        assert state["status"] == "applied" and state["applied"] == 25
    alert = sse.alerts[0].json
    assert alert["type"] == "org.jinshui.risk.alert.raised.v1"
    assert alert["data"]["level"] == "HIGH" and alert["data"]["beat"] == "B1"
    assert alert["data"]["evidence"][0]["type"] == "org.jinshui.registry.visit.recorded.v1"


async def _settled(gw: Gateway, sid: str):
    state = await gw.submission(sid)
    return state if state["status"] != "received" else None


async def test_risk_killed_mid_stream_still_gives_exactly_200_alerts(gateway):
    households = codes(200)
    await gateway.register_households(households)
    async with gateway.stream() as sse:
        for i in range(0, 100, 10):
            await gateway.post_visits(households[i : i + 10])
        await eventually(lambda: len(sse.alerts) >= 1, what="the first alerts")
        gateway.stack.kill("risk", signal.SIGKILL)
        await gateway.stack.wait_exit("risk", 10)
        for i in range(100, 200, 10):
            await gateway.post_visits(households[i : i + 10])
        await gateway.stack.start_service("risk")
        await assert_exactly_once(gateway, sse, households)


async def test_a_visit_to_an_unknown_household_is_rejected_with_the_reason(gateway):
    await gateway.register_households(["KNOWN1"])
    sid = await gateway.post_visits(["KNOWN1", "NOSUCH9"], concerns=())
    state = await eventually(lambda: _settled(gateway, sid), what="settled submission")
    assert state["status"] == "partially_applied"
    assert state["outcomes"][0]["status"] == "applied"
    assert state["outcomes"][1] == {"index": 1, "status": "rejected", "reason": "household NOSUCH9 is not registered"}


async def test_a_submission_is_visible_only_to_its_submitter(gateway):
    await gateway.register_households(["KNOWN2"])
    sid = await gateway.post_visits(["KNOWN2"], sub="gw-1")
    r = await gateway.http.get(f"/v1/submissions/{sid}", headers=gateway.auth("grid_worker", "gw-2"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
