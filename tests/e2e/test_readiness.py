"""Readiness follows the servers: 503 while NATS is away, 200 again when it is back, and the flow resumes."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token


async def _status(url: str) -> int:
    async with httpx.AsyncClient(timeout=3) as c:
        try:
            return (await c.get(url + "/readyz")).status_code
        except httpx.HTTPError:
            return 0


async def test_services_are_not_ready_while_nats_is_down_and_recover_after(stack, service_env, servers):
    s = await stack(services=("registry", "gateway"))
    urls = [s.url("registry"), s.url("gateway")]
    servers.stop_nats()
    try:
        for url in urls:
            await eventually(lambda url=url: _is(url, 503), timeout=30, what=f"{url} not ready")
            async with httpx.AsyncClient() as c:
                body = (await c.get(url + "/livez")).json()
            assert body == {"status": "ok"}, "alive while not ready"
    finally:
        servers.start_nats()
    for url in urls:
        await eventually(lambda url=url: _is(url, 200), timeout=60, what=f"{url} ready again")

    home = service_env["JINSHUI_HOME"]
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=15) as gw:
        admin = {"Authorization": f"Bearer {issue_token(home=home, role='community_admin')}"}
        worker = {"Authorization": f"Bearer {issue_token(home=home, role='grid_worker')}", "Prefer": "wait=20"}
        r = await gw.post(
            "/v1/households", json={"code": "R1", "address": "a", "grid": "G", "beat": "B"}, headers=admin
        )
        assert r.status_code == 201
        visit = {"household_code": "R1", "visited_at": datetime.now(UTC).isoformat()}
        r = await gw.post("/v1/visits", json={"visits": [visit]}, headers=worker)
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text


async def _is(url: str, status: int) -> bool:
    return await _status(url) == status
