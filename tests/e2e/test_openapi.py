"""The gateway's public OpenAPI: complete (every endpoint of the role table, with a summary), served with a
self-contained /docs, and held to by the running gateway (Schemathesis: no 5xx, responses as documented)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jinshui.gateway.rbac import ROLES
from jinshui.kit.tokens import issue_token

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BUDGET_SECONDS = 75  # the whole Schemathesis run
MAX_EXAMPLES = 15  # per operation
PREFERRED_ROLES = ("police", "grid_worker", "community_admin")  # the first the endpoint admits; else its own
NOT_FUZZED = {("GET", "/v1/alerts/stream"): "an endless stream; tested in test_risk_alerts and the desk test"}
REPORT = Path(__file__).resolve().parents[2] / "test-artifacts" / "openapi" / "schemathesis.txt"

pytestmark = pytest.mark.timeout(300)


def role_for(method: str, path: str) -> str:
    allowed = ROLES[(method, path)]
    return next((r for r in PREFERRED_ROLES if r in allowed), allowed[0])


def test_every_endpoint_of_the_role_table_is_documented_with_a_summary():
    from fastapi.testclient import TestClient

    from jinshui.gateway.main import build

    client = TestClient(build().app)
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    documented = {(m.upper(), p): op for p, item in spec["paths"].items() for m, op in item.items()}
    missing = sorted(set(ROLES) - set(documented))
    assert not missing, f"in rbac.ROLES but not in /openapi.json: {missing}"
    no_summary = sorted(k for k in ROLES if not documented[k].get("summary"))
    assert not no_summary, f"no summary: {no_summary}"
    for key in ROLES:
        op = documented[key]
        assert op["security"] == [{"bearer": []}], key
        assert "401" in op["responses"] and "403" in op["responses"], key
        problem = op["responses"]["422"]["content"]
        assert "application/problem+json" in problem, f"{key}: 422 is answered as problem+json"
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert not [p for p in spec["paths"] if p.startswith("/desk") or p == "/docs"], "pages are not API"

    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "https://" not in docs.text and "cdn" not in docs.text.lower(), "/docs loads nothing from elsewhere"
    for asset in ("docs.js", "docs.css"):
        assert client.get(f"/desk/static/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN-backed page is gone


def fuzz(base: str, tokens: dict[str, str]) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """Schemathesis against the running gateway, bounded in time: (cases per operation, failures, not run)."""
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    deadline = time.monotonic() + BUDGET_SECONDS
    ran: list[tuple[str, int]] = []
    failures: list[str] = []
    not_run: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        key = (op.method.upper(), op.path)
        label = f"{key[0]} {key[1]}"
        if key not in ROLES:
            continue  # /livez, /readyz, /metrics... are not the public API
        if key in NOT_FUZZED:
            not_run.append(f"{label}: {NOT_FUZZED[key]}")
            continue
        if time.monotonic() > deadline:
            not_run.append(f"{label}: out of time")
            continue
        auth = {"Authorization": f"Bearer {tokens[role_for(*key)]}"}
        count = run_operation(op, label, base, auth, deadline, failures)
        ran.append((label, count))
    return ran, failures, not_run


def run_operation(op, label: str, base: str, headers: dict[str, str], deadline: float, failures: list[str]) -> int:
    """Up to MAX_EXAMPLES cases of one operation (examples from the schema first); returns how many ran."""
    count = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def run(case) -> None:
        nonlocal count
        if time.monotonic() > deadline:
            return
        count += 1
        try:
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, timeout=20)
        except (Exception, BaseExceptionGroup) as e:  # a failed check: kept (the run is bounded, not shrunk)
            failures.append(f"{label}: {e}")

    run()
    return count


async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(stack, service_env):
    limits = {role: [0, 0] for roles in ROLES.values() for role in roles}
    s = await stack(
        env_overrides={
            "RATE_LIMITS": json.dumps(limits),
            "RATE_LIMIT_DEFAULT": "[0, 0]",
            "PREFER_WAIT_MAX_SECONDS": "1",
        }
    )
    home = service_env["JINSHUI_HOME"]
    roles = {role for roles in ROLES.values() for role in roles}
    tokens = {role: issue_token(home=home, role=role, sub=f"fuzz-{role}") for role in roles}
    base = s.url("gateway")
    started = time.monotonic()
    ran, failures, not_run = await asyncio.to_thread(fuzz, base, tokens)
    took = time.monotonic() - started
    cases = sum(n for _, n in ran)
    lines = [
        f"Schemathesis {schemathesis.__version__} against the gateway: {len(ran)} operations, {cases} cases, "
        f"{len(failures)} failures, {took:.0f} s",
        *(f"  {label}: {n} cases" for label, n in ran),
        "not run:",
        *(f"  {x}" for x in not_run),
        "failures:",
        *(f"  {f}" for f in failures),
    ]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:1]))
    assert not failures, "\n\n".join(failures[:20])
    assert not [x for x in not_run if "out of time" in x], f"the budget did not cover every operation: {not_run}"
    assert cases >= len(ran), "each operation got at least one case"
