"""The gateway's door: the role table walked whole, problem answers, idempotency keys, Prefer: wait, rates."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import httpx
import pytest_asyncio

from jinshui.gateway.main import build
from jinshui.gateway.rbac import ROLES
from jinshui.kit.tokens import ROLES as ALL_ROLES
from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"


class Client(httpx.AsyncClient):
    home: str

    def auth(self, role: str, sub: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}"}


async def _client(stack, service_env, services=("gateway",), env=None):
    s = await stack(services=services, env_overrides=env or {})
    client = Client(base_url=s.url("gateway"), timeout=15)
    client.home = service_env["JINSHUI_HOME"]
    return client


@pytest_asyncio.fixture
async def gw(stack, service_env):
    async with await _client(stack, service_env) as client:
        yield client


def visit(code: str = "H1", **extra) -> dict:
    return {"household_code": code, "visited_at": datetime.now(UTC).isoformat(), **extra}


def test_every_endpoint_is_in_the_role_table_and_every_entry_exists():
    paths = build().app.openapi()["paths"]
    endpoints = {(m.upper(), p) for p, ops in paths.items() for m in ops if p.startswith("/v1/")}
    assert endpoints == set(ROLES), f"missing from the table: {endpoints - set(ROLES)}; stale: {set(ROLES) - endpoints}"


async def test_every_role_against_every_endpoint(gw):
    """Allowed roles get past the door (any answer but 401/403); the others get 403 problem+json."""
    checked = 0
    for (method, path), role in itertools.product(sorted(ROLES), ALL_ROLES):
        url = path.replace("{submission_id}", "no-such-submission").replace("{code}", "NOSUCH")
        kwargs = {"json": {}} if method == "POST" else {}
        async with gw.stream(method, url, headers=gw.auth(role, sub=f"{role}-m"), **kwargs) as r:
            status = r.status_code
            if status == 403:
                assert r.headers["content-type"] == PROBLEM
        if role in ROLES[(method, path)]:
            assert status not in (401, 403), f"{role} refused at {method} {path}"
        else:
            assert status == 403, f"{role} admitted at {method} {path} ({status})"
        checked += 1
    assert checked == len(ROLES) * len(ALL_ROLES)


async def test_unknown_paths_and_methods_are_problems(gw):
    r = await gw.get("/v1/nothing-here", headers=gw.auth("police"))
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = await gw.delete("/v1/visits", headers=gw.auth("grid_worker"))
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM


async def test_a_body_that_is_not_json_is_415(gw):
    r = await gw.post(
        "/v1/visits", content=b"household=H1", headers={**gw.auth("grid_worker"), "content-type": "text/plain"}
    )
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM
    assert "application/json" in r.json()["detail"]


async def test_a_body_over_the_limit_is_413(stack, service_env):
    async with await _client(stack, service_env, env={"MAX_BODY_BYTES": "4096"}) as gw:
        big = {"visits": [visit(f"H{i}", note="x" * 200) for i in range(40)]}
        r = await gw.post("/v1/visits", json=big, headers=gw.auth("grid_worker"))
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM

        async def chunks():  # no Content-Length: the limit holds for a streamed body too
            for _ in range(10):
                yield b" " * 1000

        r = await gw.post(
            "/v1/visits", content=chunks(), headers={**gw.auth("grid_worker"), "content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_a_caller_over_its_role_rate_gets_429_with_retry_after(stack, service_env):
    async with await _client(stack, service_env, env={"RATE_LIMITS": '{"police": [1, 3]}'}) as gw:
        headers = gw.auth("police", sub="officer-9")
        statuses = [(await gw.get("/v1/submissions/x", headers=headers)).status_code for _ in range(5)]
        assert statuses[:3] == [404, 404, 404]
        assert 429 in statuses[3:]
        r = await gw.get("/v1/submissions/x", headers=headers)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"] == PROBLEM
        # Another officer has a bucket of their own.
        assert (await gw.get("/v1/submissions/x", headers=gw.auth("police", sub="officer-10"))).status_code == 404


async def test_the_same_key_and_body_answer_the_same_and_submit_once(gw):
    headers = {**gw.auth("grid_platform", sub="platform-1"), "Idempotency-Key": "batch-2026-11-26-001"}
    body = {"visits": [visit("H1")]}
    first = await gw.post("/v1/visits", json=body, headers=headers)
    again = await gw.post("/v1/visits", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["submission_id"] == first.json()["submission_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]


async def test_the_same_key_with_another_body_is_422(gw):
    headers = {**gw.auth("grid_platform", sub="platform-2"), "Idempotency-Key": "k-1"}
    assert (await gw.post("/v1/visits", json={"visits": [visit("H1")]}, headers=headers)).status_code == 202
    r = await gw.post("/v1/visits", json={"visits": [visit("H2")]}, headers=headers)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "another request body" in r.json()["detail"]


async def test_keys_belong_to_their_caller(gw):
    body = {"visits": [visit("H1")]}
    a = await gw.post(
        "/v1/visits", json=body, headers={**gw.auth("grid_platform", sub="p-a"), "Idempotency-Key": "same"}
    )
    b = await gw.post(
        "/v1/visits", json=body, headers={**gw.auth("grid_platform", sub="p-b"), "Idempotency-Key": "same"}
    )
    assert a.json()["submission_id"] != b.json()["submission_id"]


async def test_integration_clients_must_send_a_key(gw):
    r = await gw.post("/v1/visits", json={"visits": [visit()]}, headers=gw.auth("grid_platform"))
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"]


async def test_prefer_wait_answers_with_the_outcome(stack, service_env):
    async with await _client(stack, service_env, services=("registry", "incidents", "risk", "gateway")) as gw:
        household = {"code": "W1", "address": "a", "grid": "G1", "beat": "B1"}
        assert (await gw.post("/v1/households", json=household, headers=gw.auth("community_admin"))).status_code == 201
        r = await gw.post(
            "/v1/visits",
            json={"visits": [visit("W1"), visit("NOPE")]},
            headers={**gw.auth("grid_worker"), "Prefer": "wait=10"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["preference-applied"] == "wait=10"
        body = r.json()
        assert body["status"] == "partially_applied"
        assert [o["status"] for o in body["outcomes"]] == ["applied", "rejected"]
