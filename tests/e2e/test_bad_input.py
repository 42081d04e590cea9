"""Bad input on POST /v1/visits gets a problem+json naming the field or the reason."""

from __future__ import annotations

import httpx
import pytest
import pytest_asyncio

from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"


@pytest_asyncio.fixture
async def gw(stack, service_env):
    s = await stack(services=("gateway",))
    home = service_env["JINSHUI_HOME"]
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=10) as client:
        client.token = lambda role: issue_token(home=home, role=role)
        yield client


def auth(gw, role="grid_worker"):
    return {"Authorization": f"Bearer {gw.token(role)}"}


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def test_malformed_json_is_named(gw):
    r = await gw.post("/v1/visits", content=b'{"visits": [', headers={**auth(gw), "content-type": "application/json"})
    body = problem(r, 422)
    assert body["errors"][0]["field"] == "body"
    assert body["errors"][0]["reason"].startswith("malformed JSON")


@pytest.mark.parametrize(
    ("visit", "field", "reason"),
    [
        ({"visited_at": "2026-11-26T08:00:00Z"}, "body.visits[0].household_code", "Field required"),
        ({"household_code": "H1", "visited_at": "yesterday"}, "body.visits[0].visited_at", "datetime"),
        (
            {"household_code": "H1", "visited_at": "2026-11-26T08:00:00Z", "concerns": ["fire"]},
            "body.visits[0].concerns[0]",
            "'dispute', 'hazard', 'welfare_need' or 'urgent'",
        ),
        ({"household_code": "H 1", "visited_at": "2026-11-26T08:00:00Z"}, "body.visits[0].household_code", "pattern"),
    ],
)
async def test_missing_or_mistyped_fields_are_named(gw, visit, field, reason):
    r = await gw.post("/v1/visits", json={"visits": [visit]}, headers=auth(gw))
    body = problem(r, 422)
    assert body["errors"][0]["field"] == field
    assert reason in body["errors"][0]["reason"]


async def test_an_empty_or_oversized_batch_is_refused(gw):
    body = problem(await gw.post("/v1/visits", json={"visits": []}, headers=auth(gw)), 422)
    assert body["errors"][0]["field"] == "body.visits"
    visit = {"household_code": "H1", "visited_at": "2026-11-26T08:00:00Z"}
    body = problem(await gw.post("/v1/visits", json={"visits": [visit] * 501}, headers=auth(gw)), 422)
    assert body["errors"][0]["field"] == "body.visits"
    assert "at most 500" in body["errors"][0]["reason"]


async def test_no_token_is_401_and_names_the_reason(gw):
    r = await gw.post("/v1/visits", json={"visits": []})
    body = problem(r, 401)
    assert body["detail"] == "a bearer token is required"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_a_forged_token_is_401(gw):
    token = gw.token("grid_worker")
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}AAAA"
    r = await gw.post("/v1/visits", json={"visits": []}, headers={"Authorization": f"Bearer {forged}"})
    assert "not valid" in problem(r, 401)["detail"]


async def test_the_wrong_role_is_403_with_the_roles_allowed(gw):
    visit = {"household_code": "H1", "visited_at": "2026-11-26T08:00:00Z"}
    r = await gw.post("/v1/visits", json={"visits": [visit]}, headers=auth(gw, "police"))
    body = problem(r, 403)
    assert "police" in body["detail"]
    assert "grid_worker" in body["allowed_roles"]
