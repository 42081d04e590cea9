"""Timers are rows: they fire once when the clock passes them, survive restarts, and can re-arm themselves."""

from __future__ import annotations

from datetime import timedelta

import pytest_asyncio

from jinshui.kit import db, timers
from jinshui.kit.app import KIT_MIGRATIONS
from jinshui.kit.clock import AdjustableClock, advance
from jinshui.kit.timers import TimerLoop

SCHEMA = "timertest"


@pytest_asyncio.fixture
async def pool(database_url):
    p = await db.create_pool(database_url, schema=SCHEMA)
    await db.migrate(p, schema=SCHEMA, sources=[("kit", KIT_MIGRATIONS)])
    await p.execute("CREATE TABLE fired (ref text, at timestamptz)")
    yield p
    await p.close()


async def record(conn, timer, now):
    await conn.execute("INSERT INTO fired VALUES ($1, $2)", timer.ref, now)


async def fired(pool) -> list[str]:
    return [r["ref"] for r in await pool.fetch("SELECT ref FROM fired ORDER BY at, ref")]


async def test_a_timer_fires_once_when_the_clock_passes_it(pool, tmp_path):
    clock = AdjustableClock(tmp_path / "clock")
    async with pool.acquire() as conn:
        await timers.schedule(conn, kind="overdue", ref="incident-1", due_at=clock.now() + timedelta(hours=4))
    loop = TimerLoop(pool=pool, clock=clock, handlers={"overdue": record})
    assert await loop.fire_due() == 0
    advance(tmp_path / "clock", 5 * 3600)
    # A new loop, as after a restart: the row is what remembers the timer.
    loop = TimerLoop(pool=pool, clock=clock, handlers={"overdue": record})
    assert await loop.fire_due() == 1
    assert await loop.fire_due() == 0
    assert await fired(pool) == ["incident-1"]


async def test_a_cancelled_timer_never_fires(pool, tmp_path):
    clock = AdjustableClock(tmp_path / "clock")
    async with pool.acquire() as conn:
        await timers.schedule(conn, kind="overdue", ref="x", due_at=clock.now())
        await timers.cancel(conn, kind="overdue", ref="x")
    assert await TimerLoop(pool=pool, clock=clock, handlers={"overdue": record}).fire_due() == 0


async def test_a_failing_timer_stays_armed_and_the_others_still_fire(pool, tmp_path):
    clock = AdjustableClock(tmp_path / "clock")
    attempts = 0

    async def flaky(conn, timer, now):
        nonlocal attempts
        if timer.ref == "bad":
            attempts += 1
            if attempts == 1:
                await conn.execute("INSERT INTO fired VALUES ('half-done', now())")
                raise RuntimeError("not this time")
        await record(conn, timer, now)

    async with pool.acquire() as conn:
        await timers.schedule(conn, kind="k", ref="bad", due_at=clock.now() - timedelta(seconds=2))
        await timers.schedule(conn, kind="k", ref="good", due_at=clock.now() - timedelta(seconds=1))
    loop = TimerLoop(pool=pool, clock=clock, handlers={"k": flaky})
    assert await loop.fire_due() == 1
    assert await fired(pool) == ["good"], "the failed firing left nothing half-done"
    assert await loop.fire_due() == 1
    assert sorted(await fired(pool)) == ["bad", "good"]


async def test_a_timer_that_moves_itself_stays_armed(pool, tmp_path):
    clock = AdjustableClock(tmp_path / "clock")

    async def every_30_days(conn, timer, now):
        await record(conn, timer, now)
        await timers.schedule(conn, kind="review", ref=timer.ref, due_at=timer.due_at + timedelta(days=30))

    async with pool.acquire() as conn:
        await timers.schedule(conn, kind="review", ref="ledger-7", due_at=clock.now() + timedelta(days=30))
    loop = TimerLoop(pool=pool, clock=clock, handlers={"review": every_30_days})
    advance(tmp_path / "clock", 31 * 86400)
    assert await loop.fire_due() == 1
    assert await loop.fire_due() == 0
    advance(tmp_path / "clock", 30 * 86400)
    assert await loop.fire_due() == 1
    assert await fired(pool) == ["ledger-7", "ledger-7"]
