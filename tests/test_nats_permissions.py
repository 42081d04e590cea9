"""NATS permissions: each service's user publishes on its own subjects and is refused on another's."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import pytest
from nats.js.api import ConsumerConfig

from jinshui.cli import natsauth
from jinshui.contracts import streams
from jinshui.contracts.streams import Naming
from jinshui.kit import natsconn


def test_the_table_renders_for_no_prefix_a_fixed_one_and_any():
    assert natsauth.publish_allow("risk")[:2] == ["risk.>", "dlq.>"]
    assert natsauth.publish_allow("risk", "site1")[:2] == ["site1.risk.>", "site1.dlq.>"]
    assert natsauth.publish_allow("risk", natsauth.ANY_PREFIX)[:2] == ["risk.>", "*.risk.>"]
    for service in natsauth.PUBLISHES:
        assert "$JS.API.>" in natsauth.publish_allow(service, "site1")
    assert "$KV.>" in natsauth.publish_allow("gateway") and "$KV.>" not in natsauth.publish_allow("risk")
    text = natsauth.render({s: f"{s}-pw" for s in natsauth.PUBLISHES}, prefix="site1", admin_password="a")
    assert '"site1.registry.>"' in text and '{user: "admin", password: "a"}' in text


@pytest.fixture
def users(servers):
    if not servers.nats_users:
        pytest.skip("the session's NATS has no users (only the embedded one is started with them)")
    return servers.nats_users


@contextlib.asynccontextmanager
async def connect_as(servers, user: str, password: str):
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(servers.nats_url, user=user, password=password, error_cb=on_error, allow_reconnect=False)
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
