"""Gateway bootstrap: the only door."""

from __future__ import annotations

import httpx

from jinshui.contracts import streams
from jinshui.contracts.incidents import INCIDENTS_SUBMISSION_SETTLED
from jinshui.gateway import (
    api,
    desk_routes,
    incidents_routes,
    ops_routes,
    registry_routes,
    registry_upkeep_routes,
    risk_routes,
)
from jinshui.gateway.auth import verifier_from_settings
from jinshui.gateway.door import DoorMiddleware, RateLimiter
from jinshui.gateway.feed import AlertFeed
from jinshui.gateway.idempotency import Idempotency
from jinshui.gateway.settings import GatewaySettings
from jinshui.gateway.submissions import Submissions, open_bucket
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.kit.keyfile import watch_keyring

SETTLEMENTS = [
    ("gateway-submissions", streams.REGISTRY, streams.REGISTRY_SUBMISSION_SETTLED),
    ("gateway-risk-submissions", streams.RISK, streams.RISK_SUBMISSION_SETTLED),
    ("gateway-incidents-submissions", streams.INCIDENTS, INCIDENTS_SUBMISSION_SETTLED),
]


def build(settings: GatewaySettings | None = None) -> Service:
    settings = settings or GatewaySettings()
    svc = Service(name="gateway", settings=settings, uses_db=False)
    svc.app.state.verifier = verifier_from_settings(settings)
    svc.app.state.keyring = settings.pii_keyring()
    watch_keyring(svc, settings)  # `jinshui keys add` makes a new key active: new values are sealed with it
    # Idle connections are dropped well before the services' keep-alive (30 s) ends theirs: no stale reuse.
    svc.app.state.http = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=200, keepalive_expiry=10))
    svc.app.state.rate_limiter = RateLimiter(settings.rate_limits, default=settings.rate_limit_default)
    svc.app.add_middleware(DoorMiddleware, max_body_bytes=settings.max_body_bytes)

    async def fold(conn, event):
        await svc.app.state.submissions.fold_settled(conn, event)

    # Each owner settles the submissions it consumes; the gateway folds every verdict into the bucket.
    for durable, stream, subject in SETTLEMENTS:
        # A settlement is the final state of its own submission: several are folded at once (one KV put each,
        # which waits on the server's disk), in any order.
        svc.consumer(ConsumerSpec(durable=durable, stream=stream, subjects=[subject], handler=fold, concurrency=32))

    @svc.on_start
    async def _open(s: Service) -> None:
        kv = await open_bucket(
            s.js,
            s.naming,
            "submissions",
            ttl_seconds=settings.submissions_ttl_seconds,
            replicas=settings.jinshui_stream_replicas,
        )
        s.app.state.submissions = Submissions(js=s.js, kv=kv, naming=s.naming)
        keys = await open_bucket(
            s.js,
            s.naming,
            "idempotency",
            ttl_seconds=settings.idempotency_ttl_seconds,
            replicas=settings.jinshui_stream_replicas,
        )
        s.app.state.idempotency = Idempotency(keys, lease_seconds=settings.idempotency_lease_seconds)
        feed = AlertFeed(
            js=s.js,
            naming=s.naming,
            buffer=settings.feed_buffer,
            client_queue=settings.feed_client_queue,
            heartbeat=settings.feed_heartbeat_seconds,
        )
        await feed.start()
        feed.end_streams_on_signals()
        s.app.state.feed = feed

    @svc.on_stop
    async def _close(s: Service) -> None:
        if getattr(s.app.state, "feed", None) is not None:
            await s.app.state.feed.stop()
        await s.app.state.http.aclose()

    svc.app.include_router(api.router)
    svc.app.include_router(registry_routes.router)
    svc.app.include_router(registry_upkeep_routes.router)
    svc.app.include_router(risk_routes.router)
    svc.app.include_router(ops_routes.router)
    svc.app.include_router(incidents_routes.router)
    desk_routes.install(svc.app)
    return svc
