"""NATS permissions: each service's user publishes on its own subjects and is refused on another's."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import httpx
import nats
import pytest
from nats.js.api import ConsumerConfig

from jinshui.cli import natsauth
from jinshui.cli.embedded import start_nats
from jinshui.cli.stack import Stack
from jinshui.contracts import streams
from jinshui.contracts.streams import Naming
from jinshui.kit import natsconn
from jinshui.kit.tokens import issue_token


def test_the_table_renders_for_no_prefix_a_fixed_one_and_any():
    assert natsauth.publish_allow("risk")[:2] == ["risk.>", "dlq.>"]
    assert natsauth.publish_allow("risk", "site1")[:2] == ["site1.risk.>", "site1.dlq.>"]
    assert natsauth.publish_allow("risk", natsauth.ANY_PREFIX)[:2] == ["risk.>", "*.risk.>"]
    for service in natsauth.PUBLISHES:
        allowed = natsauth.publish_allow(service, "site1")
        assert "$JS.API.>" not in allowed and not any(".DELETE." in s or ".PURGE." in s for s in allowed)
        assert "$JS.API.STREAM.CREATE.SITE1_RISK" in allowed  # every service provisions every stream
    risk = natsauth.publish_allow("risk", "site1")
    assert "$JS.API.CONSUMER.DURABLE.CREATE.SITE1_REGISTRY.>" in risk
    assert not any("SITE1_INTAKE.>" in s or s.endswith("INFO.SITE1_INTAKE") for s in risk)
    gateway = natsauth.publish_allow("gateway", "site1")
    assert "$KV.site1_submissions.>" in gateway and "$JS.API.DIRECT.GET.KV_site1_idempotency.>" in gateway
    assert not any(s.startswith("$KV.") or "KV_" in s for s in risk)
    text = natsauth.render({s: f"{s}-pw" for s in natsauth.PUBLISHES}, prefix="site1", admin_password="a")
    assert '"site1.registry.>"' in text and '{user: "admin", password: "a"}' in text


@pytest.fixture
def users(servers):
    if not servers.nats_users:
        pytest.skip("the session's NATS has no users (only the embedded one is started with them)")
    return servers.nats_users


@contextlib.asynccontextmanager
async def connect_as(servers, user: str, password: str):
    """`servers`: the session's Servers, or a NatsServer of a test's own (both have .url)."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    url = servers.nats_url if hasattr(servers, "nats_url") else servers.url
    nc = await nats.connect(url, user=user, password=password, error_cb=on_error, allow_reconnect=False)
    try:
        yield nc, errors
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def refused(nc, errors: list[str], subject: str) -> None:
    """Publishing `subject` through JetStream gets no ack, and the server says why."""
    with pytest.raises(Exception) as raised:
        await nc.jetstream().publish(subject, b"{}", timeout=1)
    assert not isinstance(raised.value, AssertionError)
    for _ in range(50):
        if any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}: {errors}")


@pytest.fixture
async def admin_js(servers, stream_prefix):
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream(timeout=5)
    await natsconn.ensure_streams(js, Naming(stream_prefix))
    yield js
    await nc.close()


async def messages(js, naming: Naming, stream) -> int:
    return (await js.stream_info(naming.stream(stream))).state.messages


async def test_a_service_publishes_its_own_subjects_and_is_refused_on_anothers(servers, users, admin_js, stream_prefix):
    naming = Naming(stream_prefix)
    async with connect_as(servers, *users["risk"]) as (nc, errors):
        js = nc.jetstream(timeout=5)
        ack = await js.publish(naming.subject("risk.alert.raised.B1"), b"{}")
        assert ack.stream == naming.stream(streams.RISK)
        await js.publish(naming.subject("dlq.risk-test"), b"{}")
        await refused(nc, errors, naming.subject("registry.visit.recorded.X"))
        await refused(nc, errors, naming.subject("intake.visit.submitted"))
    async with connect_as(servers, *users["gateway"]) as (nc, errors):
        await nc.jetstream(timeout=5).publish(naming.subject("intake.visit.submitted"), b"{}")
        await nc.jetstream(timeout=5).publish(naming.subject("dlq.gateway-settled"), b"{}")
        await refused(nc, errors, naming.subject("risk.alert.raised.B1"))
    assert await messages(admin_js, naming, streams.RISK) == 1
    assert await messages(admin_js, naming, streams.REGISTRY) == 0
    assert await messages(admin_js, naming, streams.INTAKE) == 1


async def test_a_service_consumes_another_streams_through_jetstream_but_cannot_listen_on_its_subjects(
    servers, users, admin_js, stream_prefix
):
    naming = Naming(stream_prefix)
    await admin_js.publish(naming.subject("registry.visit.recorded.X"), b"{}")
    async with connect_as(servers, *users["risk"]) as (nc, errors):
        js = nc.jetstream(timeout=5)
        # A pull consumer: provisioned through the API, fetched on an inbox, acked.
        sub = await js.pull_subscribe(
            naming.subject("registry.>"),
            durable=naming.subject("risk-test").replace(".", "_"),
            stream=naming.stream(streams.REGISTRY),
            config=ConsumerConfig(),
        )
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        # Core NATS on another service's subjects: refused.
        await nc.subscribe(naming.subject("registry.>"))
        for _ in range(50):
            if any("permissions violation" in e.lower() for e in errors):
                break
            await asyncio.sleep(0.02)
        assert any("permissions violation for subscription" in e.lower() for e in errors), errors


async def refused_api(nc, errors: list[str], subject: str, call) -> None:
    """A JetStream API call the user may not make: it gets no answer, and the server says why."""
    with pytest.raises(Exception) as raised:
        await call
    assert not isinstance(raised.value, AssertionError)
    for _ in range(50):
        if any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in errors):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no permissions violation for {subject}: {errors}")


@pytest.fixture
def narrowed_nats(tmp_path, stream_prefix):
    """A NATS of this test's own whose users are rendered for its one prefix: stream names are told apart."""
    passwords = {user: f"{user}-narrow" for user in (*natsauth.PUBLISHES, natsauth.ADMIN_USER)}
    config = natsauth.render(passwords, prefix=stream_prefix, admin_password=passwords[natsauth.ADMIN_USER])
    server = start_nats(tmp_path / "nats", config_extra=config)
    try:
        yield server, passwords
    finally:
        server.stop()


async def test_with_narrowed_jetstream_rights_the_services_work_and_none_may_read_or_delete_beyond_its_own(
    narrowed_nats, stream_prefix, tmp_path, service_env
):
    server, passwords = narrowed_nats
    admin_url = server.url.replace("nats://", f"nats://admin:{passwords['admin']}@", 1)
    naming = Naming(stream_prefix)
    s = Stack(
        env={**service_env, "NATS_URL": server.url},
        log_dir=tmp_path / "logs",
        nats_users=natsauth.service_users(passwords),
    )
    try:
        await s.start(90)

        # A flow through every service: submissions (INTAKE, KV), settlements folded, an incident, the alert feed
        # (ordered consumers on RISK and REGISTRY), the streams' info for the ops status.
        home = service_env["JINSHUI_HOME"]

        def auth(role: str, sub: str | None = None) -> dict[str, str]:
            return {"Authorization": f"Bearer {issue_token(home=home, role=role, sub=sub)}"}

        async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=30) as http:
            body = {"code": "N1", "address": "金水小区1-1-101", "grid": "G01", "beat": "B1"}
            r = await http.post("/v1/households", json=body, headers=auth("community_admin"))
            assert r.status_code == 201, r.text
            async with http.stream("GET", "/v1/alerts/stream", headers=auth("police", "po-1")) as feed:
                assert feed.status_code == 200
                assert await anext(feed.aiter_text()) == ": connected\n\n"
                visit = {"household_code": "N1", "visited_at": datetime.now(UTC).isoformat()}
                headers = {**auth("grid_worker", "gw-1"), "Prefer": "wait=30"}
                r = await http.post("/v1/visits", json={"visits": [visit]}, headers=headers)
                assert r.status_code == 200 and r.json()["status"] == "applied", r.text
                call = {
                    "call_id": "110-N-1",
                    "received_at": datetime.now(UTC).isoformat(),
                    "category": "dispute",
                    "household_code": "N1",
                }
                headers = {**auth("police_platform", "pp-1"), "Prefer": "wait=30", "Idempotency-Key": "n-1"}
                r = await http.post("/v1/police-calls", json={"calls": [call]}, headers=headers)
                assert r.status_code == 200 and r.json()["status"] == "applied", r.text
                incident_id = r.json()["outcomes"][0]["ref"]
                r = await http.get(f"/v1/incidents/{incident_id}", headers=auth("police"))
                assert r.status_code == 200, r.text
            r = await http.get("/v1/ops/status", headers=auth("ops"))
            assert r.status_code == 200 and not any("error" in v for v in r.json()["streams"].values()), r.text
    finally:
        await s.stop()
    log = server.log_path.read_text()
    assert "violation" not in log.lower(), [line for line in log.splitlines() if "iolation" in line]

    # Risk reads REGISTRY, not INTAKE; and no service deletes a stream.
    async with connect_as(server, "risk", passwords["risk"]) as (nc, errors):
        js = nc.jetstream(timeout=2)
        config = ConsumerConfig(durable_name="risk-peek", filter_subject=naming.subject("registry.>"))
        await js.add_consumer(naming.stream(streams.REGISTRY), config)
        intake = naming.stream(streams.INTAKE)
        peek = ConsumerConfig(durable_name="risk-peek")
        await refused_api(
            nc, errors, f"$JS.API.CONSUMER.DURABLE.CREATE.{intake}.risk-peek", js.add_consumer(intake, peek)
        )
        await refused_api(nc, errors, f"$JS.API.STREAM.DELETE.{intake}", js.delete_stream(intake))
    async with connect_as(server, "gateway", passwords["gateway"]) as (nc, errors):
        js = nc.jetstream(timeout=2)
        registry = naming.stream(streams.REGISTRY)
        await refused_api(nc, errors, f"$JS.API.STREAM.DELETE.{registry}", js.delete_stream(registry))
        await refused_api(nc, errors, f"$JS.API.STREAM.PURGE.{registry}", js.purge_stream(registry))
    assert "violation" in server.log_path.read_text().lower(), "the server logs a refusal (the check above can fail)"
    nc = await nats.connect(admin_url)
    try:
        info = await nc.jetstream().stream_info(naming.stream(streams.INTAKE))
        assert info.state.messages >= 2, "INTAKE kept its submissions"
    finally:
        await nc.close()
