"""Transactional outbox: events written in the caller's transaction; a relay publishes them to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable

import asyncpg
from nats.js import JetStreamContext

from jinshui.contracts.envelope import CONTENT_TYPE, CloudEvent, encode
from jinshui.contracts.streams import Naming
from jinshui.kit import metrics, telemetry

log = logging.getLogger(__name__)


def _row(event: CloudEvent, subject: str) -> tuple[str, str, dict[str, str], bytes]:
    headers = telemetry.inject({})
    if event.traceparent is None and "traceparent" in headers:
        event = event.model_copy(update={"traceparent": headers["traceparent"]})
    return (event.id, subject, headers, encode(event))


async def add(conn: asyncpg.Connection, *, event: CloudEvent, subject: str) -> None:
    """Record one event to publish on `subject` (unprefixed), in the caller's transaction."""
    await add_many(conn, [(event, subject)])


async def add_many(conn: asyncpg.Connection, items: Iterable[tuple[CloudEvent, str]]) -> None:
    """Record several events in the caller's transaction; an event id already recorded is skipped."""
    rows = [_row(event, subject) for event, subject in items]
    if rows:
        await conn.executemany(
            "INSERT INTO outbox (id, subject, headers, payload) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            rows,
        )


class OutboxRelay:
    """Claims unpublished rows, publishes them with Nats-Msg-Id = event id, marks them after the ack.

    Woken by LISTEN/NOTIFY; polls as the fallback. Retries with back-off until the broker has every row.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        naming: Naming,
        dsn: str,
        schema: str,
        service: str,
        batch: int = 500,
        poll_interval: float = 1.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.pool, self.js, self.naming = pool, js, naming
        self.dsn, self.schema, self.service = dsn, schema, service
        self.batch, self.poll_interval, self.publish_timeout = batch, poll_interval, publish_timeout
        self._wake = asyncio.Event()
        self._stopping = False
        self.last_error: str | None = None

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published. Raises if any failed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT seq, id, subject, headers, payload FROM outbox WHERE published_at IS NULL"
                " ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return 0
            results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
            done = [r["seq"] for r, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
            failed = [
                (r["seq"], repr(res)) for r, res in zip(rows, results, strict=True) if isinstance(res, BaseException)
            ]
            if done:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE seq = ANY($1::bigint[])", done)
            if failed:
                await conn.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1", failed
                )
        metrics.OUTBOX_PUBLISHED.labels(self.service).inc(len(done))
        if failed:
            metrics.OUTBOX_FAILURES.labels(self.service).inc(len(failed))
            self.last_error = failed[0][1]
            raise PublishFailed(f"{len(failed)} of {len(rows)} events not published: {failed[0][1]}")
        self.last_error = None
        return len(done)

    async def _publish(self, row: asyncpg.Record) -> None:
        subject = self.naming.subject(row["subject"])
        with telemetry.messaging_span(
            "publish", row["subject"], headers=row["headers"], kind=telemetry.SpanKind.PRODUCER
        ):
            headers = telemetry.inject({"Nats-Msg-Id": row["id"], "Content-Type": CONTENT_TYPE})
            await self.js.publish(subject, row["payload"], headers=headers, timeout=self.publish_timeout)

    async def backlog(self) -> int:
        n = await self.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        metrics.OUTBOX_BACKLOG.labels(self.service).set(n)
        return n

    async def oldest_age(self) -> float:
        """Seconds since the oldest unpublished row was written (0 when none wait)."""
        age = await self.pool.fetchval(
            "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox WHERE published_at IS NULL"
        )
        metrics.OUTBOX_OLDEST.labels(self.service).set(float(age))
        return round(float(age), 3)

    async def run(self) -> None:
        """Publish until stopped; never gives up on a row."""
        listener = asyncio.create_task(self._listen())
        failures = 0
        try:
            while not self._stopping:
                try:
                    n = await self.publish_pending()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # never give up: a lost connection (InterfaceError) is as passing as a 503
                    failures += 1
                    delay = min(0.05 * 2**failures, 5.0) * (0.5 + random.random())
                    log.warning("outbox publish failed", extra={"error": str(e), "retry_in": round(delay, 3)})
                    await asyncio.sleep(delay)
                    continue
                if n >= self.batch:
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _listen(self) -> None:
        from jinshui.kit.db import connect

        channel = f"jinshui_outbox_{self.schema}"
        while True:
            try:
                conn = await connect(self.dsn, schema=self.schema)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda *_, ev=closed: ev.set())
                try:
                    await conn.add_listener(channel, lambda *_: self._wake.set())
                    self._wake.set()
                    await closed.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the poll is the fallback; keep trying to listen
                log.debug("outbox listener down", extra={"error": str(e)})
                await asyncio.sleep(1.0)


class PublishFailed(Exception):
    pass
