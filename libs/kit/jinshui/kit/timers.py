"""Timers as rows (`due_at`, `fired_at`), claimed with FOR UPDATE SKIP LOCKED; firing runs in one transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jinshui.kit.clock import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timer:
    kind: str
    ref: str
    due_at: datetime
    payload: dict[str, Any]


TimerHandler = Callable[[asyncpg.Connection, Timer, datetime], Awaitable[None]]


async def schedule(
    conn: asyncpg.Connection, *, kind: str, ref: str, due_at: datetime, payload: dict[str, Any] | None = None
) -> None:
    """Set (or move) the timer `kind`/`ref` to fire at `due_at`, in the caller's transaction."""
    await conn.execute(
        """INSERT INTO timers (kind, ref, due_at, payload) VALUES ($1, $2, $3, $4)
           ON CONFLICT (kind, ref) DO UPDATE SET due_at = $3, payload = $4, fired_at = NULL""",
        kind,
        ref,
        due_at,
        payload or {},
    )


async def cancel(conn: asyncpg.Connection, *, kind: str, ref: str) -> None:
    """Cancel a timer that has not fired, in the caller's transaction."""
    await conn.execute("DELETE FROM timers WHERE kind = $1 AND ref = $2 AND fired_at IS NULL", kind, ref)


class TimerLoop:
    """Fires due timers by the service's clock (so tests can move time in running processes)."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        clock: Clock,
        handlers: dict[str, TimerHandler],
        interval: float = 0.5,
        batch: int = 200,
    ) -> None:
        self.pool, self.clock, self.handlers = pool, clock, handlers
        self.interval, self.batch = interval, batch
        self._stopping = False

    async def fire_due(self) -> int:
        """Fire one batch of due timers; returns how many fired."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT kind, ref, due_at, payload FROM timers
                   WHERE fired_at IS NULL AND due_at <= $1 AND kind = ANY($2::text[])
                   ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED""",
                now,
                list(self.handlers),
                self.batch,
            )
            fired = 0
            for row in rows:
                timer = Timer(row["kind"], row["ref"], row["due_at"], row["payload"])
                try:
                    async with conn.transaction():
                        await self.handlers[timer.kind](conn, timer, now)
                except Exception:  # left unfired: tried again on the next tick, the others still fire
                    log.exception("timer failed", extra={"kind": timer.kind, "ref": timer.ref})
                    continue
                # A handler that moved its own timer (a recurring check) keeps it armed.
                await conn.execute(
                    "UPDATE timers SET fired_at = $4 WHERE kind = $1 AND ref = $2 AND due_at = $3",
                    timer.kind,
                    timer.ref,
                    timer.due_at,
                    now,
                )
                fired += 1
        return fired

    async def run(self) -> None:
        while not self._stopping:
            try:
                fired = await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database may be restarting; try again on the next tick
                log.warning("timers not fired", extra={"error": repr(e)})
                fired = 0
            if fired < self.batch:
                await asyncio.sleep(self.interval)

    def stop(self) -> None:
        self._stopping = True
