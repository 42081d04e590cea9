"""Deadlines (督办) fire from the kit's timer rows: "due soon" and "overdue" events written in the firing
transaction, so that a deadline that passes while the service is down still fires after a restart."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from jinshui.contracts.incidents import DeadlineFired, IncidentStatus
from jinshui.incidents import journal, rules
from jinshui.incidents.journal import derived_id
from jinshui.incidents.lifecycle import apply_move
from jinshui.kit.timers import Timer

SYSTEM = "system:deadlines"


async def fire(conn: asyncpg.Connection, timer: Timer, now: datetime) -> None:
    """Emit the deadline's event; an overdue time to resolve also escalates the incident."""
    incident = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1 FOR UPDATE", timer.payload["incident_id"])
    if incident is None:
        return
    stage, deadline = timer.payload["stage"], timer.payload["deadline"]
    due_at = datetime.fromisoformat(timer.payload["due_at"])
    status = IncidentStatus(incident["status"])
    data = DeadlineFired(
        incident_id=incident["id"],
        deadline=deadline,
        stage=stage,
        due_at=due_at,
        category=incident["category"],
        status=status,
        grid=incident["grid"],
        beat=incident["beat"],
    )
    fired_id = derived_id("fired", timer.ref, timer.due_at.isoformat())
    await journal.record(
        conn,
        incident_id=incident["id"],
        entity="deadline",
        verb=stage,
        data=data,
        at=timer.due_at,
        actor=SYSTEM,
        event_id=fired_id,
    )
    if stage != "overdue":
        return
    await conn.execute("UPDATE incidents SET overdue = true WHERE id = $1", incident["id"])
    if deadline == "resolve" and IncidentStatus.escalated in rules.MOVES[status]:
        await apply_move(
            conn,
            row=incident,
            to=IncidentStatus.escalated,
            reason=f"the time to resolve passed at {due_at.isoformat()}",
            by=SYSTEM,
            role="system",
            at=timer.due_at,
            event_id=derived_id("escalated", fired_id),
        )
