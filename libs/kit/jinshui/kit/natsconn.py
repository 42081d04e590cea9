"""NATS: one connection per process (server list, unlimited reconnects), idempotent stream provisioning."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from jinshui.contracts.streams import ALL_STREAMS, Naming, StreamDef

log = logging.getLogger(__name__)


async def connect(settings, *, name: str) -> NATS:
    """Connect with reconnects that never give up; readiness reads `is_connected`."""

    async def on_error(e: Exception) -> None:
        log.warning("nats error", extra={"error": repr(e)})

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=settings.nats_servers,
        name=name,
        user=settings.nats_user,
        password=settings.nats_password,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        pending_size=64 * 1024 * 1024,
    )


def stream_config(stream: StreamDef, naming: Naming, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=naming.stream(stream),
        subjects=naming.subjects(stream),
        storage=StorageType.FILE,
        max_age=float(stream.max_age_seconds) if stream.max_age_seconds else None,
        duplicate_window=float(stream.duplicate_window_seconds),
        num_replicas=replicas,
    )


async def ensure_streams(
    js: JetStreamContext, naming: Naming, streams: tuple[StreamDef, ...] = ALL_STREAMS, *, replicas: int = 1
) -> None:
    """Create each stream, or bring an existing one to its definition."""
    for stream in streams:
        config = stream_config(stream, naming, replicas=replicas)
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)


async def all_streams(js: JetStreamContext) -> list:
    """Every stream's info: the server answers a page at a time (256), so a long list is read to its end."""
    out: list = []
    while page := await js.streams_info(offset=len(out)):
        out += page
    return out


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or update it to this configuration."""
    try:
        await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)
        return
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as e:
        log.warning("consumer config not updated", extra={"consumer": config.durable_name, "error": str(e)})


async def publish_event(js: JetStreamContext, naming: Naming, *, event, subject: str, timeout: float = 5.0):
    """Publish one CloudEvent directly (not through an outbox) and wait for JetStream's ack; raises without it.

    For what must be durable before an answer is given: an accepted submission, the audit of a read.
    """
    from jinshui.contracts.envelope import CONTENT_TYPE, encode
    from jinshui.kit import telemetry

    with telemetry.messaging_span("publish", subject, kind=telemetry.SpanKind.PRODUCER):
        if event.traceparent is None:
            event = event.model_copy(update={"traceparent": telemetry.current_traceparent()})
        headers = telemetry.inject({"Nats-Msg-Id": event.id, "Content-Type": CONTENT_TYPE})
        return await js.publish(naming.subject(subject), encode(event), headers=headers, timeout=timeout)
