"""The rules of the backbone against real NATS and PostgreSQL: outbox relay, inbox, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
import pytest_asyncio

from jinshui.contracts import streams
from jinshui.contracts.envelope import encode, new_event
from jinshui.contracts.streams import Naming
from jinshui.kit import db, natsconn, outbox
from jinshui.kit.app import KIT_MIGRATIONS
from jinshui.kit.consumer import ConsumerSpec, InboxConsumer, Permanent, records_in
from jinshui.kit.outbox import OutboxRelay
from jinshui.kit.settings import ServiceSettings
from jinshui.kit.testing import eventually

SCHEMA = "kittest"
TYPE = "org.jinshui.registry.household.registered.v1"


@pytest_asyncio.fixture
async def env(servers, database_url, stream_prefix):
    pool = await db.create_pool(database_url, schema=SCHEMA)
    await db.migrate(pool, schema=SCHEMA, sources=[("kit", KIT_MIGRATIONS)])
    await pool.execute("CREATE TABLE effects (event_id text NOT NULL, at timestamptz DEFAULT now())")
    settings = ServiceSettings(nats_url=servers.nats_url, database_url=database_url)
    nc = await natsconn.connect(settings, name="kit-test")
    js = nc.jetstream(timeout=5)
    naming = Naming(stream_prefix)
    await natsconn.ensure_streams(js, naming)
    tasks: list[asyncio.Task] = []
    yield type("Env", (), {"pool": pool, "nc": nc, "js": js, "naming": naming, "dsn": database_url, "tasks": tasks})
    for t in tasks:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
    with contextlib.suppress(Exception):
        await nc.close()
    await pool.close()


def event(i: int = 0):
    return new_event(
        type=TYPE,
        source="/test",
        data={"code": f"H{i}", "address": "a", "grid": "G1", "beat": "B1", "registered_at": "2026-11-26T00:00:00Z"},
    )


async def stream_ids(js, naming: Naming, stream, subject: str) -> list[str]:
    """Every Nats-Msg-Id stored on `subject`, in order (reads the stream with an ephemeral consumer)."""
    sub = await js.subscribe(naming.subject(subject), stream=naming.stream(stream), ordered_consumer=True)
    ids = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return ids
            ids.append(msg.headers["Nats-Msg-Id"])
    finally:
        await sub.unsubscribe()


async def test_relay_keeps_events_while_nats_is_down_and_publishes_each_once_back(servers, env):
    subject = "registry.household.registered.relaytest"
    servers.stop_nats()
    events = [event(i) for i in range(50)]
    async with env.pool.acquire() as conn, conn.transaction():
        await outbox.add_many(conn, [(e, subject) for e in events])
    relay = OutboxRelay(
        pool=env.pool, js=env.js, naming=env.naming, dsn=env.dsn, schema=SCHEMA, service="t", publish_timeout=0.5
    )
    env.tasks.append(asyncio.create_task(relay.run()))
    await eventually(lambda: relay.last_error, what="a failed publish while NATS is down")
    assert await relay.backlog() == 50

    servers.start_nats()
    await eventually(lambda: _backlog_zero(relay), timeout=30, what="outbox drained")
    ids = await stream_ids(env.js, env.naming, streams.REGISTRY, subject)
    assert sorted(ids) == sorted(e.id for e in events)


async def _backlog_zero(relay) -> bool:
    return await relay.backlog() == 0


def consumer(
    env, handler, *, durable="kit-test", max_deliver=5, records_per_transaction=None, together=None
) -> InboxConsumer:
    spec = ConsumerSpec(
        durable=durable,
        stream=streams.REGISTRY,
        subjects=["registry.household.registered.>"],
        handler=handler,
        batch=50,
        max_deliver=max_deliver,
        retry_delay=0.05,
        records_per_transaction=records_per_transaction,
        together=together,
        together_types=frozenset({TYPE}),
    )
    c = InboxConsumer(pool=env.pool, js=env.js, naming=env.naming, spec=spec)
    env.tasks.append(asyncio.create_task(c.run()))
    return c


async def record_effect(conn, ev) -> None:
    await conn.execute("INSERT INTO effects (event_id) VALUES ($1)", ev.id)


async def publish(env, ev, *, msg_id: str | None = None, raw: bytes | None = None, key: str = "k") -> None:
    await env.js.publish(
        env.naming.subject(f"registry.household.registered.{key}"),
        raw if raw is not None else encode(ev),
        headers={"Nats-Msg-Id": msg_id or str(uuid.uuid4()), "X-Original": "kept"},
    )


async def effects(env) -> list[str]:
    return [r["event_id"] for r in await env.pool.fetch("SELECT event_id FROM effects ORDER BY at")]


async def test_the_same_event_delivered_twice_has_one_effect(env):
    consumer(env, record_effect)
    twice, marker = event(1), event(2)
    await publish(env, twice)
    await publish(env, twice)  # a second message (another Nats-Msg-Id) carrying the same event
    await publish(env, marker)
    await eventually(lambda: _has(env, marker.id), what="the marker event's effect")
    assert await effects(env) == [twice.id, marker.id]
    assert await env.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", twice.id) == 1


async def _has(env, event_id: str) -> bool:
    return event_id in await effects(env)


async def dlq_messages(env) -> list:
    sub = await env.js.subscribe(
        env.naming.subject("dlq.>"), stream=env.naming.stream(streams.DLQ), ordered_consumer=True
    )
    out = []
    try:
        while True:
            try:
                out.append(await sub.next_msg(timeout=0.5))
            except nats.errors.TimeoutError:
                return out
    finally:
        await sub.unsubscribe()


async def test_a_poison_message_lands_in_the_dlq_and_the_next_is_still_processed(env):
    consumer(env, record_effect)
    after = event(3)
    await publish(env, None, raw=b"{this is not json", key="poison")
    await publish(env, after)
    await eventually(lambda: _has(env, after.id), what="the message after the poison")
    dead = await eventually(lambda: dlq_messages(env), what="a dead letter")
    assert len(dead) == 1
    h = dead[0].headers
    assert h["Jinshui-Dlq-Reason"].startswith("not a CloudEvent")
    assert h["Jinshui-Dlq-Subject"] == "registry.household.registered.poison"
    assert h["X-Original"] == "kept"
    assert dead[0].data == b"{this is not json"


async def test_a_handler_refusal_and_exhausted_retries_are_dead_lettered_with_their_reasons(env):
    refused, flaky, fine = event(4), event(5), event(6)

    async def handler(conn, ev):
        if ev.id == refused.id:
            raise Permanent("household data is unusable")
        if ev.id == flaky.id:
            raise RuntimeError("database said no")
        await record_effect(conn, ev)

    consumer(env, handler, max_deliver=3)
    for ev in (refused, flaky, fine):
        await publish(env, ev)
    await eventually(lambda: _has(env, fine.id), what="the healthy event")
    dead = await eventually(lambda: _count(dlq_messages(env), 2), what="two dead letters", timeout=30)
    reasons = sorted(m.headers["Jinshui-Dlq-Reason"] for m in dead)
    assert reasons[0] == "household data is unusable"
    assert reasons[1].startswith("max deliveries (3) reached; last error: handler error: database said no")
    # Neither left an effect or an inbox row behind; a later fix can replay them.
    assert await effects(env) == [fine.id]
    assert await env.pool.fetchval("SELECT count(*) FROM inbox") == 1


async def _count(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_all_streams_reads_past_the_first_page(servers, stream_prefix):
    # The server lists 256 streams a page; a backup or a scan that read only the first would miss some.
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    names = [f"{stream_prefix.upper()}_PAGE{i:03d}" for i in range(300)]
    try:
        await asyncio.gather(
            *(js.add_stream(name=n, subjects=[f"{stream_prefix}.page{i}"]) for i, n in enumerate(names))
        )
        assert len(await js.streams_info()) <= 256 < len(names), "one page holds fewer than all"
        listed = {s.config.name for s in await natsconn.all_streams(js)}
        assert set(names) <= listed
    finally:
        await asyncio.gather(*(js.delete_stream(n) for n in names), return_exceptions=True)
        await nc.close()


async def test_a_fetched_batch_is_applied_in_transactions_of_about_the_records_asked(env):
    await env.pool.execute("CREATE TABLE tx_of (event_id text, tx bigint, records int)")
    sizes = [4, 4, 4, 1, 12, 3]
    sent = [new_event(type=TYPE, source="/test", data={"records": [{"i": i}] * n}) for i, n in enumerate(sizes)]
    for ev in sent:  # all in the stream before the consumer fetches them
        await publish(env, ev)

    async def remember(conn, ev) -> None:
        await conn.execute("INSERT INTO tx_of VALUES ($1, txid_current(), $2)", ev.id, records_in(ev))

    consumer(env, remember, records_per_transaction=10)
    await eventually(lambda: env.pool.fetchval("SELECT count(*) = 6 FROM tx_of"), what="every event applied")
    rows = await env.pool.fetch("SELECT tx, array_agg(records ORDER BY event_id) AS n FROM tx_of GROUP BY tx")
    assert len(rows) > 1, "28 records are not one transaction"
    for r in rows:
        assert sum(r["n"]) <= 10 or len(r["n"]) == 1, f"a transaction of {r['n']} records"
    assert sorted(n for r in rows for n in r["n"]) == sorted(sizes)


async def test_events_that_follow_one_another_are_handled_together_and_one_by_one_when_that_fails(env):
    calls: list[int] = []

    async def together(conn, evs) -> None:
        calls.append(len(evs))
        if any(ev.data["code"] == "bad" for ev in evs):
            raise ValueError("one of them cannot be taken")
        await conn.executemany("INSERT INTO effects (event_id) VALUES ($1)", [(ev.id,) for ev in evs])

    async def one(conn, ev) -> None:
        if ev.data["code"] == "bad":
            raise Permanent("refused")
        await record_effect(conn, ev)

    first = [event(i) for i in range(5)]
    for ev in first:
        await publish(env, ev)
    consumer(env, one, together=together)
    await eventually(lambda: env.pool.fetchval("SELECT count(*) = 5 FROM effects"), what="the five effects")
    assert calls and max(calls) > 1, "events that came together were handled in one call"

    bad = new_event(type=TYPE, source="/test", data={**event(9).data, "code": "bad"})
    then = [event(10), bad, event(11)]
    for ev in then:
        await publish(env, ev)
    await eventually(lambda: _has(env, then[-1].id), what="the events beside the refused one")
    assert sorted(await effects(env)) == sorted(e.id for e in [*first, then[0], then[2]])
    dead = await eventually(lambda: dlq_messages(env), what="the refused event's dead letter")
    assert [d.headers["Jinshui-Dlq-Reason"] for d in dead] == ["refused"]


async def test_without_a_database_a_batch_is_taken_up_to_concurrency_at_once_and_each_acknowledged(env):
    sent = [event(20 + i) for i in range(8)]
    for ev in sent:
        await publish(env, ev)
    running, most, done = [0], [0], []

    async def fold(_conn, ev) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.05)  # a put that waits on the server: the others go on meanwhile
        running[0] -= 1
        done.append(ev.id)

    spec = ConsumerSpec(
        durable="kit-idempotent",
        stream=streams.REGISTRY,
        subjects=["registry.household.registered.>"],
        handler=fold,
        batch=50,
        concurrency=4,
    )
    c = InboxConsumer(pool=None, js=env.js, naming=env.naming, spec=spec)
    env.tasks.append(asyncio.create_task(c.run()))
    await eventually(lambda: len(done) >= 8, what="every event folded")
    assert sorted(done) == sorted(e.id for e in sent) and 1 < most[0] <= 4

    async def all_acked() -> bool:
        info = await env.js.consumer_info(env.naming.stream(streams.REGISTRY), "kit-idempotent")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(all_acked, what="every message acknowledged")
