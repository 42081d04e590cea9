"""The floors of this machine: raw nats-py and asyncpg on the same servers, on a stream and a table of their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from jinshui.cli.embedded import database_dsn

STREAM = "BENCH_FLOOR"
SUBJECT = "benchfloor.msg"
DATABASE = "bench_floor"
WINDOW = 500  # messages in flight, and rows per transaction
PAYLOAD = 256  # bytes: about one visit record as JSON


def _batch_payload() -> bytes:
    visit = {
        "household_code": "B00H000001",
        "visited_at": datetime.now(UTC).isoformat(),
        "concerns": [],
        "people_present": 2,
        "follow_up_requested": False,
        "note": "入户走访：家中情况正常，已核对常住人口。",
    }
    return orjson.dumps({"specversion": "1.0", "data": {"records": [visit] * WINDOW}})


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


async def nats_floors(url: str, *, seconds: float, samples: int) -> dict[str, dict]:
    """JetStream publish (one in flight; 500 in flight then await), and pull fetch(500) + ack, file storage."""
    nc = await nats.connect(url, name="jinshui-bench-floor", pending_size=64 * 1024 * 1024)
    js = nc.jetstream(timeout=10)
    payload = os.urandom(PAYLOAD // 2).hex().encode()
    out: dict[str, dict] = {}
    try:
        with contextlib.suppress(Exception):
            await js.delete_stream(STREAM)
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))

        latencies = []
        for _ in range(samples):
            t = time.perf_counter()
            await js.publish(SUBJECT, payload)
            latencies.append(time.perf_counter() - t)
        out["publish_one"] = {
            "rate": _rate(len(latencies), sum(latencies)),
            "unit": "msg/s",
            "p50_ms": statistics.median(latencies) * 1000,
            "what": f"js.publish awaiting each ack, {PAYLOAD} B",
        }

        sent = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await asyncio.gather(*(js.publish(SUBJECT, payload) for _ in range(WINDOW)))
            sent += WINDOW
        out["publish_windowed"] = {
            "rate": _rate(sent, elapsed),
            "unit": "msg/s",
            "what": f"js.publish, {WINDOW} in flight then await the acks, {PAYLOAD} B",
        }

        # Intake's own shape: one message per 500-visit batch (the size the gateway publishes), 16 in flight.
        batch = _batch_payload()
        batches = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await asyncio.gather(*(js.publish(SUBJECT, batch) for _ in range(16)))
            batches += 16
        out["publish_batches"] = {
            "rate": _rate(batches * WINDOW, elapsed),
            "unit": "records/s",
            "what": f"js.publish of 500-visit batches ({len(batch) // 1024} KiB each), 16 in flight",
        }

        total = sent + len(latencies) + batches
        await js.add_consumer(
            STREAM, ConsumerConfig(durable_name="floor", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
        )
        sub = await js.pull_subscribe_bind(durable="floor", stream=STREAM)
        got = 0
        started = time.perf_counter()
        while got < total:
            msgs = await sub.fetch(WINDOW, timeout=5)
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush()
        out["fetch_ack"] = {
            "rate": _rate(got, time.perf_counter() - started),
            "unit": "msg/s",
            "what": f"pull fetch({WINDOW}) + ack each, of {got} messages already in the stream",
        }
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(STREAM)
        await nc.close()
    return out


_TABLE = """CREATE TABLE floor_rows (
    id text PRIMARY KEY, household_code text NOT NULL, grid_worker text NOT NULL, visited_at timestamptz NOT NULL,
    concerns text[] NOT NULL, people_present integer NOT NULL, follow_up_requested boolean NOT NULL,
    note text NOT NULL, submission_id text NOT NULL, record_index integer NOT NULL, recorded_at timestamptz NOT NULL)"""
_COLUMNS = [
    "id",
    "household_code",
    "grid_worker",
    "visited_at",
    "concerns",
    "people_present",
    "follow_up_requested",
    "note",
    "submission_id",
    "record_index",
    "recorded_at",
]


def _rows(n: int) -> list[tuple]:
    now = datetime.now(UTC)
    sub = str(uuid.uuid4())
    return [
        (str(uuid.uuid4()), f"B00H{i:06d}", "gw-1", now, ["hazard"] if i % 20 == 0 else [], 2, False, "", sub, i, now)
        for i in range(n)
    ]


async def postgres_floors(admin_url: str, *, seconds: float, samples: int) -> dict[str, dict]:
    """asyncpg: one row per committed transaction; executemany 500 rows per transaction; COPY 500 rows per call.

    The table has the shape of the registry's visits table; PostgreSQL runs with its defaults (fsync on).
    """
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    out: dict[str, dict] = {}
    conn = await asyncpg.connect(database_dsn(admin_url, DATABASE))
    try:
        await conn.execute(_TABLE)
        insert = f"INSERT INTO floor_rows ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'${i + 1}' for i in range(11))})"

        latencies = []
        for row in _rows(samples):
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute(insert, *row)
            latencies.append(time.perf_counter() - t)
        out["commit_one"] = {
            "rate": _rate(len(latencies), sum(latencies)),
            "unit": "rows/s",
            "p50_ms": statistics.median(latencies) * 1000,
            "what": "one row per committed transaction",
        }

        for key, what in (
            ("executemany", f"executemany, {WINDOW} rows per transaction"),
            ("copy", f"copy_records_to_table, {WINDOW} rows per call and transaction"),
        ):
            n, busy = 0, 0.0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                rows = _rows(WINDOW)  # made outside the timed part
                t = time.perf_counter()
                async with conn.transaction():
                    if key == "executemany":
                        await conn.executemany(insert, rows)
                    else:
                        await conn.copy_records_to_table("floor_rows", records=rows, columns=_COLUMNS)
                busy += time.perf_counter() - t
                n += WINDOW
            out[key] = {"rate": _rate(n, busy), "unit": "rows/s", "what": what}
    finally:
        await conn.close()
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        finally:
            await admin.close()
    return out
