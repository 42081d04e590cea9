"""The service factory: settings, telemetry, pool and migrations, NATS and streams, relay, consumers, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jinshui.contracts.streams import ALL_STREAMS, Naming
from jinshui.kit import db, metrics, natsconn, problems, telemetry
from jinshui.kit.clock import clock_from_settings
from jinshui.kit.consumer import ConsumerSpec, InboxConsumer
from jinshui.kit.outbox import OutboxRelay
from jinshui.kit.problems import Problem
from jinshui.kit.settings import ServiceSettings
from jinshui.kit.timers import TimerHandler, TimerLoop
from jinshui.kit.tokens import Identity

log = logging.getLogger(__name__)
KIT_MIGRATIONS = Path(__file__).parent / "migrations"

Hook = Callable[["Service"], Awaitable[None]]


class Service:
    """One Jinshui service: build it in `main`, add consumers, routes and hooks, then `run()`."""

    def __init__(
        self,
        *,
        name: str,
        settings: ServiceSettings,
        migrations: Path | None = None,
        uses_db: bool = True,
        version: str = "0.1.0",
    ) -> None:
        self.name, self.settings, self.version = name, settings, version
        self.migrations, self.uses_db = migrations, uses_db
        self.naming = Naming(settings.jinshui_stream_prefix)
        self.clock = clock_from_settings(settings)
        self.pool: asyncpg.Pool | None = None
        self.nc = None
        self.js = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[InboxConsumer] = []
        self._specs: list[ConsumerSpec] = []
        self._timer_handlers: dict[str, TimerHandler] = {}
        self.timer_loop: TimerLoop | None = None
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._on_metrics: list[Hook] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.started_at = time.time()
        self.boot_error: str | None = None
        self._ready = False
        self.app = FastAPI(title=f"Jinshui {name}", version=version, lifespan=self._lifespan)
        self.app.state.service = self
        problems.install(self.app)
        self._health_routes()

    # --- wiring -------------------------------------------------------------------------------
    def consumer(self, spec: ConsumerSpec) -> None:
        spec.batch = min(spec.batch, self.settings.consumer_batch)
        spec.max_deliver = self.settings.consumer_max_deliver
        spec.max_ack_pending = self.settings.consumer_max_ack_pending
        self._specs.append(spec)

    def timer(self, kind: str, handler: TimerHandler) -> None:
        """Fire `handler(conn, timer, now)` for each due timer of `kind` (see jinshui.kit.timers.schedule)."""
        self._timer_handlers[kind] = handler

    def on_start(self, hook: Hook) -> Hook:
        self._on_start.append(hook)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        self._on_stop.append(hook)
        return hook

    def on_metrics(self, hook: Hook) -> Hook:
        """Run `hook` before each scrape of /metrics, to refresh gauges a service derives from its tables."""
        self._on_metrics.append(hook)
        return hook

    def spawn(self, coro: Awaitable[None], *, name: str) -> asyncio.Task:
        """A background task that lives as long as the service."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    # --- life -----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _lifespan(self, app: FastAPI):
        telemetry.setup_logging(self.name, self.settings.log_level)
        telemetry.setup_tracing(self.name, otlp_endpoint=self.settings.otel_exporter_otlp_endpoint)
        if self.settings.otel_exporter_otlp_endpoint:
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            FastAPIInstrumentor.instrument_app(app, excluded_urls="livez,readyz,metrics")
        boot = asyncio.create_task(self._boot(), name="boot")
        try:
            yield
        finally:
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await boot
            await self._shutdown()

    async def _boot(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                self.boot_error = repr(e)
                log.warning("start-up not complete, retrying", extra={"error": repr(e), "attempt": attempt})
                await self._close_connections()
                await asyncio.sleep(min(0.2 * attempt, 2.0))
        for consumer in self.consumers:
            self.spawn(consumer.run(), name=f"consumer-{consumer.spec.durable}")
        if self.relay is not None:
            self.spawn(self.relay.run(), name="outbox-relay")
        if self._timer_handlers:
            self.timer_loop = TimerLoop(pool=self.pool, clock=self.clock, handlers=self._timer_handlers)
            self.spawn(self.timer_loop.run(), name="timers")
        self.boot_error = None
        self._ready = True
        log.info("ready", extra={"service": self.name})

    async def _connect(self) -> None:
        s = self.settings
        if self.uses_db:
            self.pool = await db.create_pool(s.database_url, schema=self.name)
            sources = [("kit", KIT_MIGRATIONS)]
            if self.migrations:
                sources.append((self.name, self.migrations))
            await db.migrate(self.pool, schema=self.name, sources=sources)
        self.nc = await natsconn.connect(s, name=f"jinshui-{self.name}")
        self.js = self.nc.jetstream(timeout=5)
        await natsconn.ensure_streams(self.js, self.naming, ALL_STREAMS, replicas=s.jinshui_stream_replicas)
        self.consumers = []
        for spec in self._specs:
            consumer = InboxConsumer(pool=self.pool, js=self.js, naming=self.naming, spec=spec)
            await consumer.provision()
            self.consumers.append(consumer)
        if self.uses_db:
            self.relay = OutboxRelay(
                pool=self.pool,
                js=self.js,
                naming=self.naming,
                dsn=s.database_url,
                schema=self.name,
                service=self.name,
            )
        for hook in self._on_start:
            await hook(self)

    async def _shutdown(self) -> None:
        """Stop fetching, finish what is in hand, drain NATS, close the pool."""
        self._ready = False
        self._stopping = True
        for consumer in self.consumers:
            consumer.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.timer_loop is not None:
            self.timer_loop.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
        for consumer in self.consumers:
            await consumer.close()
        for hook in self._on_stop:
            with contextlib.suppress(Exception):
                await hook(self)
        await self._close_connections()
        telemetry.shutdown_tracing()

    async def _close_connections(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
        self.nc = self.pool = None

    # --- health -----------------------------------------------------------------------------
    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        if not self._ready:
            checks["start-up"] = self.boot_error or "starting"
        if self.uses_db:
            try:
                if self.pool is None:
                    raise RuntimeError("no pool")
                await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2)
                checks["postgres"] = "ok"
            except Exception as e:
                checks["postgres"] = f"down: {e!r}"
        checks["nats"] = "ok" if self.nc is not None and self.nc.is_connected else "down"
        stopped = [t for t in self._tasks if t.done() and not self._stopping]
        if stopped:
            checks["tasks"] = "stopped: " + ", ".join(
                f"{t.get_name()} ({t.exception()!r})" if not t.cancelled() and t.exception() else t.get_name()
                for t in stopped
            )
        return checks

    async def status(self) -> dict:
        """What the ops team needs of this service: readiness, version, uptime, consumer lag, outbox backlog."""
        checks = await self.readiness()
        out: dict = {
            "service": self.name,
            "version": self.version,
            "ready": self._ready and all(v == "ok" for v in checks.values()),
            "checks": checks,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "consumers": [],
            "last_error": self.boot_error,
        }
        for consumer in self.consumers:
            entry = {
                "durable": consumer.spec.durable,
                "stream": consumer.stream_name,
                "last_error": consumer.last_error,
            }
            try:
                info = await asyncio.wait_for(self.js.consumer_info(consumer.stream_name, consumer.spec.durable), 2)
                entry.update(
                    pending=info.num_pending,
                    awaiting_ack=info.num_ack_pending,
                    redelivered=info.num_redelivered,
                )
                metrics.CONSUMER_PENDING.labels(consumer.spec.durable).set(info.num_pending or 0)
                metrics.CONSUMER_ACK_PENDING.labels(consumer.spec.durable).set(info.num_ack_pending or 0)
            except Exception as e:
                entry["error"] = repr(e)
            out["consumers"].append(entry)
            out["last_error"] = out["last_error"] or consumer.last_error
        if self.relay is not None and self._ready:
            try:
                out["outbox"] = {
                    "backlog": await self.relay.backlog(),
                    "oldest_unpublished_seconds": await self.relay.oldest_age(),
                    "last_error": self.relay.last_error,
                }
                out["last_error"] = out["last_error"] or self.relay.last_error
            except Exception as e:
                out["outbox"] = {"error": repr(e)}
        return out

    def _health_routes(self) -> None:
        app = self.app

        @app.get("/livez", include_in_schema=False)
        async def livez() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = self._ready and all(v == "ok" for v in checks.values())
            metrics.READY.labels(self.name).set(1 if ok else 0)
            body = {"status": "ready" if ok else "not ready", "service": self.name, "checks": checks}
            return JSONResponse(body, status_code=200 if ok else 503)

        @app.get("/status", include_in_schema=False)
        async def status() -> JSONResponse:
            return JSONResponse(await self.status())

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            if self._ready:
                with contextlib.suppress(Exception):
                    await self.status()  # refreshes the lag and backlog gauges
                for hook in self._on_metrics:
                    with contextlib.suppress(Exception):
                        await hook(self)
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def run(self) -> None:
        import uvicorn

        uvicorn.run(
            self.app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            # Longer than any client's pool keeps an idle connection (the gateway's: 10 s), so that a client never
            # sends on a connection the server is just closing (an httpx ReadError, a 503 for the caller).
            timeout_keep_alive=30,
        )


# --- route dependencies ------------------------------------------------------------------------
def get_service(request: Request) -> Service:
    return request.app.state.service


def get_pool(request: Request) -> asyncpg.Pool:
    svc: Service = request.app.state.service
    if svc.pool is None or not svc._ready:
        raise Problem(503, f"{svc.name} is not ready yet; try again shortly", headers={"Retry-After": "1"})
    return svc.pool


IDENTITY_SUB = "X-Jinshui-Sub"
IDENTITY_ROLE = "X-Jinshui-Role"
IDENTITY_NAME = "X-Jinshui-Name"


def forwarded_identity(request: Request) -> Identity:
    """The caller as the gateway forwarded it (services sit behind the gateway)."""
    sub, role = request.headers.get(IDENTITY_SUB), request.headers.get(IDENTITY_ROLE)
    if not sub or not role:
        raise Problem(401, "no caller identity was forwarded")
    return Identity(sub=sub, role=role, name=request.headers.get(IDENTITY_NAME, ""))


ServiceDep = Annotated[Service, Depends(get_service)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
CallerDep = Annotated[Identity, Depends(forwarded_identity)]
