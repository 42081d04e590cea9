"""`jinshui replay SERVICE`: rebuild a service's state from its input streams into a fresh schema, and compare.

The service's own handlers (built by its `build()`, as when it runs) are fed every message of its consumers'
streams, oldest first across streams, into the schema `replay_<service>` (created anew; dropped afterwards
unless --keep). Nothing is published: the events the handlers write stay in that schema's outbox, where
their ids are compared with the live outbox's. A message a handler asks to retry later (a reference not yet
known) is tried again after the others; one it refuses is counted, as the live consumer would have
dead-lettered it. Before each message, the service's timers due by that message's time fire (time as the
service's clock sees it now: a clock moved forward in development shifts every message's time alike).

Then every table of the live schema is compared with its rebuilt twin, row by row, leaving out the columns
that legitimately differ: those filled by the database at write time (defaults of now(), sequences, random
uuids), the outbox's delivery bookkeeping, headers and payload (trace context), the inbox's processing time,
the migrations' log, and whatever --ignore TABLE.COLUMN adds. A difference elsewhere means that state was not
derived from the input alone: set up by a synchronous command (a household registered over HTTP, an alert
acknowledged), a timer that fired at a point the messages' times do not show, or a handler that read the
wall clock instead of deriving time from its input.

Read-only for the live schema and the streams; it may run while the service runs (compare when it is idle).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from jinshui.cli import opsconn
from jinshui.contracts.envelope import decode
from jinshui.contracts.streams import Naming
from jinshui.kit import db
from jinshui.kit.app import KIT_MIGRATIONS
from jinshui.kit.consumer import InboxConsumer
from jinshui.kit.timers import TimerLoop

SERVICES_WITH_STATE = ("registry", "incidents", "risk")
# Columns that differ by nature between a live schema and a rebuilt one.
ALWAYS_IGNORED = {
    "outbox": {"seq", "headers", "payload", "created_at", "published_at", "attempts", "last_error"},
    "inbox": {"processed_at"},
    # When a timer fired is wall-clock time; whether it fired shows in what it did (a re-armed row, events).
    "timers": {"fired_at"},
}
SKIPPED_TABLES = {"schema_migrations"}
_WRITE_TIME_DEFAULTS = ("now()", "current_timestamp", "clock_timestamp", "nextval(", "gen_random_uuid", "random(")
RETRY_PASSES = 5
FETCH = 1000


@dataclass
class _Meta:
    num_delivered: int = 1


@dataclass
class _Msg:
    """What InboxConsumer reads of a message: its subject, headers, payload (and delivery count)."""

    subject: str
    headers: dict[str, str] | None
    data: bytes
    metadata: _Meta = field(default_factory=_Meta)


@dataclass
class TableDiff:
    table: str
    live: int
    rebuilt: int
    missing: list[str]  # rows live has and the rebuilt schema lacks
    extra: list[str]  # rows only the rebuilt schema has
    ignored: list[str]

    @property
    def equal(self) -> bool:
        return not self.missing and not self.extra


@dataclass
class Report:
    service: str
    schema: str
    messages: int = 0
    applied: int = 0
    timers: int = 0
    refused: list[str] = field(default_factory=list)
    tables: list[TableDiff] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def build_service(name: str):
    """The service as its `main.build()` makes it (not started)."""
    if name not in SERVICES_WITH_STATE:
        raise opsconn.OpsError(f"{name!r} has no state of its own to rebuild; one of {', '.join(SERVICES_WITH_STATE)}")
    module = importlib.import_module(f"jinshui.{name}.main")
    return module.build()


async def read_inputs(js: JetStreamContext, naming: Naming, specs) -> list[tuple[Any, int, int, Any, _Msg]]:
    """Every message of each consumer's stream and subjects: (time, stream order, seq, spec, message)."""
    out = []
    for order, spec in enumerate(specs):
        stream = naming.stream(spec.stream)
        try:
            await js.stream_info(stream)
        except NotFoundError:
            continue
        subjects = [naming.subject(s) for s in spec.subjects]
        consumer = await js.add_consumer(
            stream,
            ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=60.0,
                mem_storage=True,
                filter_subject=subjects[0] if len(subjects) == 1 else None,
                filter_subjects=subjects if len(subjects) > 1 else None,
            ),
        )
        sub = await js.pull_subscribe_bind(consumer=consumer.name, stream=stream)
        try:
            remaining = consumer.num_pending  # what the subjects held when we began; later messages wait
            while remaining > 0:
                for m in await sub.fetch(min(FETCH, remaining), timeout=10):
                    seq = m.metadata.sequence.stream
                    out.append((m.metadata.timestamp, order, seq, spec, _Msg(m.subject, m.headers, m.data)))
                    remaining -= 1
        finally:
            await sub.unsubscribe()
            try:
                await js.delete_consumer(stream, consumer.name)
            except NotFoundError:
                pass
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    return out


class _ReplayClock:
    """The time of the message being replayed (plus the service clock's offset): due timers fire by it."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at + self.offset


async def apply_all(*, pool: asyncpg.Pool, js, naming: Naming, inputs, report: Report, svc) -> None:
    """Feed the messages to the handlers in order; retry what asked to be retried after the rest.

    Before each message, the timers due by its time fire, as they would have in the running service.
    """
    clock = _ReplayClock(svc.clock.now() - datetime.now(UTC))
    timers = TimerLoop(pool=pool, clock=clock, handlers=svc._timer_handlers)

    async def fire_due(at: datetime | None) -> None:
        if at is None or not svc._timer_handlers:
            return
        clock.at = at
        while await timers.fire_due():
            report.timers += 1

    consumers = {}
    pending = [(at, spec, msg) for at, _, _, spec, msg in inputs]
    report.messages = len(pending)
    for attempt in range(RETRY_PASSES):
        retry = []
        for at, spec, msg in pending:
            if attempt == 0:
                await fire_due(at)
            c = consumers.get(spec.durable)
            if c is None:
                c = consumers[spec.durable] = InboxConsumer(pool=pool, js=js, naming=naming, spec=spec)
            try:
                ev = decode(msg.data)
            except (ValueError, ValidationError) as e:
                report.refused.append(f"{spec.durable}: {naming.unprefix(msg.subject)}: not a CloudEvent ({e})"[:300])
                continue
            (outcome,) = await c._apply([(msg, ev)], savepoints=True)
            if outcome.kind == "ack":
                report.applied += outcome.reason != "duplicate"
            elif outcome.kind == "nak" and attempt < RETRY_PASSES - 1:
                retry.append((at, spec, msg))
            else:
                report.refused.append(f"{spec.durable}: {ev.type} {ev.id}: {outcome.reason}"[:300])
        if not retry:
            return
        pending = retry


async def _columns(conn: asyncpg.Connection, schema: str, table: str) -> list[tuple[str, str | None]]:
    rows = await conn.fetch(
        "SELECT column_name, column_default FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        schema,
        table,
    )
    return [(r["column_name"], r["column_default"]) for r in rows]


async def _rows(conn: asyncpg.Connection, schema: str, table: str, ignored: list[str]) -> list[str]:
    drop = "".join(f" - '{c}'" for c in ignored)
    rows = await conn.fetch(f'SELECT (to_jsonb(t){drop})::text AS row FROM "{schema}"."{table}" t')
    return [r["row"] for r in rows]


async def compare(conn: asyncpg.Connection, *, live: str, rebuilt: str, extra_ignored: set[str]) -> list[TableDiff]:
    """Row-by-row comparison of every live table with its rebuilt twin, without the columns that may differ."""
    tables = [
        r["tablename"]
        for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", live)
        if r["tablename"] not in SKIPPED_TABLES
    ]
    out = []
    for table in tables:
        columns = await _columns(conn, live, table)
        ignored = sorted(
            name
            for name, default in columns
            if name in ALWAYS_IGNORED.get(table, set())
            or f"{table}.{name}" in extra_ignored
            or (default and any(d in default.lower() for d in _WRITE_TIME_DEFAULTS))
        )
        live_rows = collections.Counter(await _rows(conn, live, table, ignored))
        if await conn.fetchval("SELECT to_regclass($1)", f'"{rebuilt}"."{table}"') is None:
            rebuilt_rows: collections.Counter[str] = collections.Counter()
        else:
            rebuilt_rows = collections.Counter(await _rows(conn, rebuilt, table, ignored))
        out.append(
            TableDiff(
                table=table,
                live=sum(live_rows.values()),
                rebuilt=sum(rebuilt_rows.values()),
                missing=sorted((live_rows - rebuilt_rows).elements()),
                extra=sorted((rebuilt_rows - live_rows).elements()),
                ignored=ignored,
            )
        )
    return out


async def rebuild_and_compare(
    *, service: str, database_url: str, js: JetStreamContext, naming: Naming, keep: bool, ignore: set[str]
) -> Report:
    """Rebuild `service` into `replay_<service>` from its input streams and compare with its live schema."""
    started = time.monotonic()
    svc = build_service(service)
    schema = f"replay_{service}"
    report = Report(service=service, schema=schema)
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", service):
            raise opsconn.OpsError(f"the database has no schema {service!r}: has the service ever run here?")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        pool = await db.create_pool(database_url, schema=schema, min_size=1, max_size=2)
        try:
            sources = [("kit", KIT_MIGRATIONS)] + ([(service, svc.migrations)] if svc.migrations else [])
            await db.migrate(pool, schema=schema, sources=sources)
            svc.pool = pool  # start hooks (arming timers, back-fills) run as on a first start
            for hook in svc._on_start:
                await hook(svc)
            inputs = await read_inputs(js, naming, svc._specs)
            await apply_all(pool=pool, js=js, naming=naming, inputs=inputs, report=report, svc=svc)
        finally:
            await pool.close()
        report.tables = await compare(conn, live=service, rebuilt=schema, extra_ignored=ignore)
        if not keep:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _print(report: Report, *, as_json: bool) -> None:
    if as_json:
        data = {
            "service": report.service,
            "equal": report.equal,
            "messages": report.messages,
            "applied": report.applied,
            "timers_fired": report.timers,
            "refused": report.refused,
            "seconds": report.seconds,
            "tables": [
                {
                    "table": t.table,
                    "live": t.live,
                    "rebuilt": t.rebuilt,
                    "equal": t.equal,
                    "missing": t.missing[:20],
                    "extra": t.extra[:20],
                    "ignored": t.ignored,
                }
                for t in report.tables
            ],
        }
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return
    print(
        f"{report.service}: {report.messages} input messages, {report.applied} applied, {len(report.refused)} "
        f"refused, {report.timers} timers fired; rebuilt in {report.schema} in {report.seconds} s"
    )
    width = max([len(t.table) for t in report.tables] + [5])
    print(f"{'TABLE':<{width}}  {'LIVE':>7}  {'REBUILT':>7}  {'MISSING':>7}  {'EXTRA':>7}")
    for t in report.tables:
        mark = "" if t.equal else "  DIFFERS"
        print(f"{t.table:<{width}}  {t.live:>7}  {t.rebuilt:>7}  {len(t.missing):>7}  {len(t.extra):>7}{mark}")
    for t in report.tables:
        for label, rows in (("only live", t.missing), ("only rebuilt", t.extra)):
            for row in rows[:2]:
                print(f"  {t.table} {label}: {row[:240]}")
    for reason in report.refused[:10]:
        print(f"  refused: {reason}")
    print("the rebuilt state equals the live one" if report.equal else "the rebuilt state differs from the live one")


async def _run(args: argparse.Namespace) -> int:
    ep = opsconn.endpoints(args)
    if not (ep.nats_url and ep.database_url):
        raise opsconn.OpsError("no NATS or PostgreSQL: start jinshui up, or give --nats-url and --database-url")
    # The service's settings come from the environment, as when it runs.
    os.environ.update(
        DATABASE_URL=ep.database_url,
        NATS_URL=ep.nats_url,
        JINSHUI_STREAM_PREFIX=args.prefix or "",
        JINSHUI_HOME=str(ep.home),
    )
    nc = await opsconn.connect_nats(ep.nats_url, home=ep.home)
    try:
        report = await rebuild_and_compare(
            service=args.service,
            database_url=ep.database_url,
            js=nc.jetstream(timeout=30),
            naming=opsconn.naming(args),
            keep=args.keep,
            ignore=set(args.ignore or ()),
        )
    finally:
        await nc.close()
    _print(report, as_json=args.json)
    return 0 if report.equal else 1


def cmd_replay(args: argparse.Namespace) -> int:
    """Rebuild a service from its input streams and compare with the live state."""
    try:
        return asyncio.run(_run(args))
    except opsconn.OpsError as e:
        print(f"jinshui replay: {e}", file=sys.stderr)
        return 2


def add_parser(sub, default_home: str) -> None:
    p = sub.add_parser(
        "replay",
        help="rebuild a service's state from its input streams and compare it with the live one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("service", choices=SERVICES_WITH_STATE)
    p.add_argument("--ignore", action="append", metavar="TABLE.COLUMN", help="also leave out this column")
    p.add_argument("--keep", action="store_true", help="keep the rebuilt schema replay_<service> to look at")
    p.add_argument("--json", action="store_true")
    opsconn.add_arguments(p, default_home, database=True)
    p.set_defaults(func=cmd_replay)
