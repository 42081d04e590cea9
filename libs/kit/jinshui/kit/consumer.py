"""Inbox + pull consumer: effects exactly once, ack after commit, dead letters with their reason."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from jinshui.contracts.envelope import CloudEvent, decode
from jinshui.contracts.streams import DLQ_PREFIX, Naming, StreamDef
from jinshui.kit import metrics, telemetry
from jinshui.kit.natsconn import ensure_consumer

log = logging.getLogger(__name__)

Handler = Callable[[asyncpg.Connection, CloudEvent], Awaitable[None]]


class Permanent(Exception):
    """This message can never succeed (bad data, unknown type): it goes to the DLQ."""


class Retry(Exception):
    """Not yet: try again after `delay` seconds (a reference not yet known, a dependency down)."""

    def __init__(self, reason: str, *, delay: float = 2.0) -> None:
        super().__init__(reason)
        self.delay = delay


@dataclass
class ConsumerSpec:
    durable: str
    stream: StreamDef
    subjects: list[str]  # filter subjects without the prefix
    handler: Handler
    batch: int = 256
    max_deliver: int = 20
    max_ack_pending: int = 2000
    ack_wait: float = 30.0
    retry_delay: float = 1.0
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    extra: dict = field(default_factory=dict)
    # Apply a fetched batch in transactions of at most this many records (see records_in), or all in one (None).
    records_per_transaction: int | None = None
    # Events of these types that follow one another in a transaction go to `together` in one call, for set-based
    # handling; other events, and every event when a batch is retried one by one, go to `handler`.
    together: Callable[[asyncpg.Connection, list[CloudEvent]], Awaitable[None]] | None = None
    together_types: frozenset[str] = frozenset()
    # Without a database: how many events of a batch the (idempotent) handler may take at once.
    concurrency: int = 1


def records_in(event: CloudEvent) -> int:
    """How many records an event carries: its data's longest list (a submitted batch's records, a beat's visits),
    or 1."""
    data = event.data if isinstance(event.data, dict) else {}
    return max([1, *(len(v) for v in data.values() if isinstance(v, list))])


@dataclass
class _Outcome:
    msg: Msg
    kind: str  # ack | nak | dlq
    reason: str = ""
    delay: float = 0.0


class InboxConsumer:
    """Fetches batches from a durable pull consumer and handles each batch in one transaction."""

    def __init__(self, *, pool: asyncpg.Pool | None, js: JetStreamContext, naming: Naming, spec: ConsumerSpec) -> None:
        self.pool, self.js, self.naming, self.spec = pool, js, naming, spec
        self._stopping = False
        self._sub = None
        self.last_error: str | None = None

    @property
    def stream_name(self) -> str:
        return self.naming.stream(self.spec.stream)

    def consumer_config(self) -> ConsumerConfig:
        s = self.spec
        subjects = [self.naming.subject(x) for x in s.subjects]
        return ConsumerConfig(
            durable_name=s.durable,
            name=s.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=s.deliver_policy,
            ack_wait=s.ack_wait,
            max_deliver=s.max_deliver,
            max_ack_pending=s.max_ack_pending,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )

    async def provision(self) -> None:
        await ensure_consumer(self.js, self.stream_name, self.consumer_config())
        self._sub = await self.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.stream_name)

    async def run(self) -> None:
        """Fetch and handle until stopped; one bad message never stops the loop."""
        if self._sub is None:
            await self.provision()
        while not self._stopping:
            try:
                msgs = await self._sub.fetch(self.spec.batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except Exception as e:
                self.last_error = repr(e)
                log.warning("fetch failed", extra={"consumer": self.spec.durable, "error": repr(e)})
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle_batch(msgs)
            except Exception as e:  # already settled per message where possible; never die
                self.last_error = repr(e)
                log.exception("batch failed", extra={"consumer": self.spec.durable})

    def stop(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        """Unsubscribe once the loop has stopped, so that draining the connection has nothing left to wait on."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def handle_batch(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        outcomes: list[_Outcome] = []
        events: list[tuple[Msg, CloudEvent]] = []
        for msg in msgs:
            try:
                events.append((msg, decode(msg.data)))
            except (ValueError, ValidationError) as e:
                outcomes.append(_Outcome(msg, "dlq", f"not a CloudEvent: {_short(e)}"))
        await self._settle(outcomes)
        for group in self._transactions(events):
            await self._settle(await self._apply_group(group))
        metrics.BATCH_SECONDS.labels(self.spec.durable).observe(time.perf_counter() - started)

    def _transactions(self, events: list[tuple[Msg, CloudEvent]]) -> list[list[tuple[Msg, CloudEvent]]]:
        """The fetched events in stream order, cut into transactions of about `records_per_transaction` records."""
        limit = self.spec.records_per_transaction
        if limit is None or self.pool is None:
            return [events] if events else []
        groups: list[list[tuple[Msg, CloudEvent]]] = []
        size = 0
        for item in events:
            n = records_in(item[1])
            if not groups or size + n > limit:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += n
        return groups

    async def _apply_group(self, events: list[tuple[Msg, CloudEvent]]) -> list[_Outcome]:
        if self.pool is None:
            return await self._apply_idempotent(events)
        try:
            return await self._apply(events, savepoints=False)
        except _Fallback:
            return await self._apply(events, savepoints=True)
        except (TimeoutError, asyncpg.PostgresError, OSError) as e:
            self.last_error = repr(e)
            log.warning("batch transaction failed", extra={"consumer": self.spec.durable, "error": repr(e)})
            return [self._transient(m, repr(e), self.spec.retry_delay) for m, _ in events]

    async def _apply(self, events: list[tuple[Msg, CloudEvent]], *, savepoints: bool) -> list[_Outcome]:
        """One transaction for the batch. Without savepoints any failure aborts it (and we retry with them)."""
        outcomes: list[_Outcome] = []
        async with self.pool.acquire() as conn, conn.transaction():
            new_ids = {
                r["event_id"]
                for r in await conn.fetch(
                    "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[])"
                    " ON CONFLICT DO NOTHING RETURNING event_id",
                    self.spec.durable,
                    [ev.id for _, ev in events],
                )
            }
            seen: set[str] = set()
            run: list[tuple[Msg, CloudEvent]] = []  # events of the together types, waiting for their call
            for msg, ev in events:
                if ev.id not in new_ids or ev.id in seen:
                    outcomes.append(_Outcome(msg, "ack", "duplicate"))
                    continue
                seen.add(ev.id)
                subject = self.naming.unprefix(msg.subject)
                if not savepoints:
                    if self.spec.together is not None and ev.type in self.spec.together_types:
                        run.append((msg, ev))
                        continue
                    await self._together(conn, run, outcomes)
                    try:
                        with telemetry.messaging_span("process", subject, headers=msg.headers):
                            await self.spec.handler(conn, ev)
                    except (Permanent, Retry, Exception) as e:
                        raise _Fallback() from e
                    outcomes.append(_Outcome(msg, "ack"))
                    continue
                try:
                    async with conn.transaction():
                        with telemetry.messaging_span("process", subject, headers=msg.headers):
                            await self.spec.handler(conn, ev)
                    outcomes.append(_Outcome(msg, "ack"))
                except Permanent as e:
                    await self._forget(conn, ev.id)
                    outcomes.append(_Outcome(msg, "dlq", str(e)))
                except Retry as e:
                    await self._forget(conn, ev.id)
                    outcomes.append(self._transient(msg, str(e), e.delay))
                except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                    raise
                except Exception as e:
                    log.exception("handler failed", extra={"consumer": self.spec.durable, "event_id": ev.id})
                    await self._forget(conn, ev.id)
                    outcomes.append(self._transient(msg, f"handler error: {_short(e)}", self.spec.retry_delay))
            await self._together(conn, run, outcomes)
        return outcomes

    async def _together(self, conn: asyncpg.Connection, run: list[tuple[Msg, CloudEvent]], outcomes: list) -> None:
        """Hand a run of events to the spec's `together` in one call (and empty the run); any failure retries the
        whole batch one event at a time, where `handler` takes each."""
        if not run:
            return
        (first, _), others = run[0], [m.headers for m, _ in run[1:]]
        try:
            subject = self.naming.unprefix(first.subject)
            with telemetry.messaging_span("process", subject, headers=first.headers, also=others):
                await self.spec.together(conn, [ev for _, ev in run])
        except (Permanent, Retry, Exception) as e:
            raise _Fallback() from e
        outcomes += [_Outcome(msg, "ack") for msg, _ in run]
        run.clear()

    async def _apply_idempotent(self, events: list[tuple[Msg, CloudEvent]]) -> list[_Outcome]:
        """Without a database the handler itself must be idempotent (e.g. a KV put of a final state); it may take
        up to `concurrency` events at once (then it must not depend on their order)."""
        slots = asyncio.Semaphore(max(1, self.spec.concurrency))

        async def one(msg: Msg, ev: CloudEvent) -> _Outcome:
            async with slots:
                try:
                    with telemetry.messaging_span("process", self.naming.unprefix(msg.subject), headers=msg.headers):
                        await self.spec.handler(None, ev)
                    return _Outcome(msg, "ack")
                except Permanent as e:
                    return _Outcome(msg, "dlq", str(e))
                except Retry as e:
                    return self._transient(msg, str(e), e.delay)
                except Exception as e:
                    return self._transient(msg, f"handler error: {_short(e)}", self.spec.retry_delay)

        return list(await asyncio.gather(*(one(msg, ev) for msg, ev in events)))

    async def _forget(self, conn: asyncpg.Connection, event_id: str) -> None:
        await conn.execute("DELETE FROM inbox WHERE consumer = $1 AND event_id = $2", self.spec.durable, event_id)

    def _transient(self, msg: Msg, reason: str, delay: float) -> _Outcome:
        delivered = _delivered(msg)
        if delivered >= self.spec.max_deliver:
            return _Outcome(msg, "dlq", f"max deliveries ({delivered}) reached; last error: {reason}")
        return _Outcome(msg, "nak", reason, delay * min(2 ** (delivered - 1), 30))

    async def _settle(self, outcomes: list[_Outcome]) -> None:
        for o in outcomes:
            metrics.MESSAGES.labels(self.spec.durable, o.kind).inc()
            try:
                if o.kind == "ack":
                    await o.msg.ack()
                elif o.kind == "nak":
                    await o.msg.nak(delay=o.delay)
                else:
                    await self.dead_letter(o.msg, o.reason)
                    await o.msg.term()
            except Exception as e:  # the server redelivers what we could not settle
                log.warning("settle failed", extra={"consumer": self.spec.durable, "error": repr(e)})

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Copy the message to the DLQ stream with its reason and original headers."""
        meta = msg.metadata
        original = self.naming.unprefix(msg.subject)
        headers = dict(msg.headers or {})
        original_id = headers.pop("Nats-Msg-Id", None)
        headers.update(
            {
                "Nats-Msg-Id": f"{meta.stream}:{meta.sequence.stream}:{self.spec.durable}",
                # Kept so that `jinshui dlq replay` can show and derive from it.
                **({"Jinshui-Dlq-Msg-Id": original_id} if original_id else {}),
                "Jinshui-Dlq-Reason": reason[:1000],
                "Jinshui-Dlq-Subject": original,
                "Jinshui-Dlq-Stream": meta.stream,
                "Jinshui-Dlq-Sequence": str(meta.sequence.stream),
                "Jinshui-Dlq-Consumer": self.spec.durable,
                "Jinshui-Dlq-Deliveries": str(meta.num_delivered),
            }
        )
        log.warning("dead letter", extra={"consumer": self.spec.durable, "subject": original, "reason": reason[:300]})
        await self.js.publish(
            self.naming.subject(f"{DLQ_PREFIX}.{self.spec.durable}"), msg.data, headers=headers, timeout=5
        )


class _Fallback(Exception):
    pass


def _delivered(msg: Msg) -> int:
    with contextlib.suppress(Exception):
        return int(msg.metadata.num_delivered)
    return 1


def _short(e: Exception) -> str:
    text = str(e).replace("\n", " ")
    return text[:500]
