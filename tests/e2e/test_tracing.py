"""One trace runs from the gateway request through registry and risk (spans exported over OTLP/HTTP)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
import pytest

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .otlp import OtlpReceiver


@pytest.fixture
def collector():
    c = OtlpReceiver()
    yield c
    c.close()


async def test_one_trace_id_runs_from_the_gateway_through_registry_and_risk(stack, service_env, collector):
    s = await stack(env_overrides={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
    home = service_env["JINSHUI_HOME"]
    trace_id = secrets.token_hex(16)
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=10) as http:
        admin = {"Authorization": f"Bearer {issue_token(home=home, role='community_admin')}"}
        r = await http.post(
            "/v1/households", json={"code": "T1", "address": "a", "grid": "G1", "beat": "B1"}, headers=admin
        )
        assert r.status_code == 201, r.text
        visit = {"household_code": "T1", "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
        r = await http.post(
            "/v1/visits",
            json={"visits": [visit]},
            headers={
                "Authorization": f"Bearer {issue_token(home=home, role='grid_worker')}",
                "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            },
        )
        assert r.status_code == 202

    def names() -> set[str]:
        return {name for _, tid, name in list(collector.spans) if tid == trace_id}

    def whole_trace() -> bool:
        # Each service exports its spans in its own batches: wait for the last hop's too.
        return {"gateway", "registry", "risk"} <= collector.services_in(trace_id) and any(
            n.startswith("publish risk.alert.raised") for n in names()
        )

    await eventually(whole_trace, timeout=30, what="spans of gateway, registry and risk in one trace")
    assert "process intake.visit.submitted" in names()
    assert any(n.startswith("process registry.visits.recorded") for n in names())  # the batch, per beat
