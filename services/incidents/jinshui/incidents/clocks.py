"""An incident's clocks: paused while waiting on a party, and the time to resolve extended (申请延期 / 批准).

Pausing takes the incident's pending timer rows out (kept on the incident, in the same transaction); resuming puts
them back moved by the time paused, so a restart in between loses none and nothing fires while paused.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from jinshui.contracts.incidents import (
    ExtensionDecided,
    ExtensionRequested,
    IncidentPaused,
    IncidentResumed,
    IncidentStatus,
)
from jinshui.incidents import journal, rules
from jinshui.incidents.journal import derived_id
from jinshui.kit import timers
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

NO_CLOCK = (IncidentStatus.resolved, IncidentStatus.closed)


def _running(row: asyncpg.Record, what: str) -> None:
    if row["status"] in NO_CLOCK:
        raise Problem(
            409,
            f"an incident that is {row['status']} has no time to resolve left to {what}",
            type="no-running-deadline",
            status_now=row["status"],
        )


async def pause(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    waiting_on: str,
    reason: str,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> None:
    _running(row, "pause")
    if row["paused_at"] is not None:
        raise Problem(
            409,
            f"this incident is already paused since {row['paused_at'].isoformat()}",
            type="already-paused",
            waiting_on=row["paused_waiting_on"],
        )
    taken = await conn.fetch(
        # A timer the timer loop holds is firing now (it was due before the pause): it is left to fire, and
        # waiting for it here could deadlock with its handler, which locks this incident.
        """DELETE FROM timers WHERE (kind, ref) IN (
               SELECT kind, ref FROM timers
               WHERE kind = ANY($1::text[]) AND payload->>'incident_id' = $2 AND fired_at IS NULL
               FOR UPDATE SKIP LOCKED)
           RETURNING kind, ref, due_at, payload""",
        list(rules.INCIDENT_TIMERS),
        row["id"],
    )
    kept = [
        {"kind": t["kind"], "ref": t["ref"], "due_at": t["due_at"].isoformat(), "payload": t["payload"]} for t in taken
    ]
    await conn.execute(
        """UPDATE incidents SET paused_at = $2, paused_waiting_on = $3, paused_timers = $4, updated_at = $2
           WHERE id = $1""",
        row["id"],
        at,
        waiting_on,
        kept,
    )
    data = IncidentPaused(
        incident_id=row["id"],
        waiting_on=waiting_on,
        reason=reason,
        by=caller.sub,
        at=at,
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn, incident_id=row["id"], verb="paused", data=data, at=at, actor=caller.sub, event_id=command_id
    )


def _shift(value: str, by: timedelta) -> str:
    return (datetime.fromisoformat(value) + by).isoformat()


async def resume(
    conn: asyncpg.Connection, *, row: asyncpg.Record, reason: str, by: str, at: datetime, event_id: str
) -> asyncpg.Record:
    """Put the paused timers back, every deadline moved by the time paused; returns the incident row now."""
    if row["paused_at"] is None:
        raise Problem(409, "this incident is not paused", type="not-paused")
    paused = max(at - row["paused_at"], timedelta(0))
    for t in row["paused_timers"] or []:
        payload = dict(t["payload"])
        key = "deadline" if t["kind"] == rules.RECTIFICATION_TIMER else "due_at"  # the deadline the events carry
        payload[key] = _shift(payload[key], paused)
        await timers.schedule(
            conn, kind=t["kind"], ref=t["ref"], due_at=datetime.fromisoformat(t["due_at"]) + paused, payload=payload
        )
    await conn.execute(
        """UPDATE incidents SET paused_at = NULL, paused_waiting_on = NULL, paused_timers = NULL,
               paused_seconds = paused_seconds + $2, updated_at = $3,
               rectify_by = CASE WHEN rectified_at IS NULL THEN rectify_by + $4 ELSE rectify_by END
           WHERE id = $1""",
        row["id"],
        paused.total_seconds(),
        at,
        paused,
    )
    data = IncidentResumed(
        incident_id=row["id"],
        paused_seconds=paused.total_seconds(),
        reason=reason,
        by=by,
        at=at,
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(conn, incident_id=row["id"], verb="resumed", data=data, at=at, actor=by, event_id=event_id)
    return await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", row["id"])


async def running(conn: asyncpg.Connection, *, row: asyncpg.Record, why: str, by: str, at, command_id: str):
    """The incident with its clocks running: a command that touches its deadlines resumes a paused incident."""
    if row["paused_at"] is None:
        return row
    return await resume(conn, row=row, reason=why, by=by, at=at, event_id=derived_id("resumed", command_id))


async def request_extension(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    days: int,
    reason: str,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> dict:
    _running(row, "extend")
    pending = await conn.fetchval(
        "SELECT id FROM extensions WHERE incident_id = $1 AND status = 'requested'", row["id"]
    )
    if pending is not None:
        raise Problem(
            409, f"extension {pending} is still waiting for a decision", type="extension-pending", extension_id=pending
        )
    extension_id = derived_id("extension", command_id)
    await conn.execute(
        """INSERT INTO extensions (id, incident_id, days, reason, status, requested_by, requested_at)
           VALUES ($1, $2, $3, $4, 'requested', $5, $6)""",
        extension_id,
        row["id"],
        days,
        reason,
        caller.sub,
        at,
    )
    await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", row["id"], at)
    data = ExtensionRequested(
        incident_id=row["id"],
        extension_id=extension_id,
        days=days,
        reason=reason,
        by=caller.sub,
        at=at,
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn,
        incident_id=row["id"],
        verb="extension_requested",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=command_id,
    )
    return await extension(conn, extension_id)


async def extension(conn: asyncpg.Connection, extension_id: str) -> dict:
    return dict(
        await conn.fetchrow(
            """SELECT id, incident_id, days, reason, status, requested_by, requested_at, decided_by, decided_at,
                      decision_reason, resolve_due_before, resolve_due_after
               FROM extensions WHERE id = $1""",
            extension_id,
        )
    )


async def decide_extension(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    extension_id: str,
    approve: bool,
    reason: str,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> dict:
    ext = await conn.fetchrow(
        "SELECT * FROM extensions WHERE id = $1 AND incident_id = $2 FOR UPDATE", extension_id, row["id"]
    )
    if ext is None:
        raise Problem(404, f"no extension {extension_id} on incident {row['id']}")
    if ext["status"] != "requested":
        raise Problem(
            409,
            f"extension {extension_id} was already {ext['status']} by {ext['decided_by']}",
            type="already-decided",
            decision=ext["status"],
        )
    before = after = None
    if approve:
        _running(row, "extend")
        row = await running(conn, row=row, why="an extension was approved", by=caller.sub, at=at, command_id=command_id)
        before, after = await _move_resolve_deadline(conn, row=row, days=ext["days"], at=at)
    status = "approved" if approve else "refused"
    await conn.execute(
        """UPDATE extensions SET status = $2, decided_by = $3, decided_at = $4, decision_reason = $5,
               resolve_due_before = $6, resolve_due_after = $7 WHERE id = $1""",
        extension_id,
        status,
        caller.sub,
        at,
        reason,
        before,
        after,
    )
    data = ExtensionDecided(
        incident_id=row["id"],
        extension_id=extension_id,
        decision=status,
        reason=reason,
        resolve_due_before=before,
        resolve_due_after=after,
        by=caller.sub,
        at=at,
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn, incident_id=row["id"], verb="extension_decided", data=data, at=at, actor=caller.sub, event_id=command_id
    )
    return await extension(conn, extension_id)


async def _move_resolve_deadline(
    conn: asyncpg.Connection, *, row: asyncpg.Record, days: int, at: datetime
) -> tuple[datetime, datetime]:
    """Move the time to resolve (and its "due soon") by the days granted; an overdue that fired fires again later."""
    refs = {stage: rules.timer_ref(row["id"], "resolve", stage) for stage in rules.STAGES}
    found = {
        r["ref"]: r
        for r in await conn.fetch(
            "SELECT ref, due_at, payload FROM timers WHERE kind = $1 AND ref = ANY($2::text[])",
            rules.TIMER_KIND,
            list(refs.values()),
        )
    }
    overdue = found.get(refs["overdue"])
    if overdue is None:
        raise Problem(409, "this incident has no time to resolve to extend", type="no-running-deadline")
    before = datetime.fromisoformat(overdue["payload"]["due_at"])
    after = rules.extended(row["category"], before, days)
    soon = found.get(refs["due_soon"])
    lead = (before - soon["due_at"]) if soon is not None else (after - before) * rules.DUE_SOON_FRACTION
    for stage, fire_at in (("due_soon", after - lead), ("overdue", after)):
        await timers.schedule(
            conn,
            kind=rules.TIMER_KIND,
            ref=refs[stage],
            due_at=fire_at,
            payload={"incident_id": row["id"], "deadline": "resolve", "stage": stage, "due_at": after.isoformat()},
        )
    if after > at:
        await conn.execute("UPDATE incidents SET overdue = false WHERE id = $1", row["id"])
    return before, after
