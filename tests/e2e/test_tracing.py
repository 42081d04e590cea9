"""One trace runs from the gateway request through registry and risk (spans exported over OTLP/HTTP)."""

from __future__ import annotations

import gzip
import secrets
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token


class Collector:
    """A minimal OTLP/HTTP trace receiver: remembers (service, trace id, span name) of every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            collector.spans.append((attrs.get("service.name", ""), span.trace_id.hex(), span.name))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def services_in(self, trace_id: str) -> set[str]:
        return {svc for svc, tid, _ in list(self.spans) if tid == trace_id}


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.server.shutdown()


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
    services = await eventually(
        lambda: {"gateway", "registry", "risk"} <= collector.services_in(trace_id) and collector.services_in(trace_id),
        timeout=30,
        what="spans of gateway, registry and risk in one trace",
    )
    assert {"gateway", "registry", "risk"} <= services
    names = {name for _, tid, name in collector.spans if tid == trace_id}
    assert "process intake.visit.submitted" in names
    assert any(n.startswith("process registry.visit.recorded") for n in names)
    assert any(n.startswith("publish risk.alert.raised") for n in names)
