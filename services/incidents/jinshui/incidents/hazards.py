"""Hazards (隐患): a deadline for rectification (整改期限) and re-inspection (复查).

The deadline is a timer row: when it passes with no re-inspection finding the hazard rectified, the firing
transaction writes `org.jinshui.incidents.hazard.rectification_overdue.v1` (risk rule 5 escalates on it), so a
deadline that passes while the service is down still fires after a restart.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from jinshui.contracts.incidents import (
    HazardInspected,
    IncidentStatus,
    InspectionResult,
    RectificationDeadlineSet,
    RectificationOverdue,
)
from jinshui.incidents import journal, rules
from jinshui.incidents.journal import derived_id
from jinshui.kit import timers
from jinshui.kit.problems import Problem
from jinshui.kit.timers import Timer
from jinshui.kit.tokens import Identity

SYSTEM = "system:deadlines"
CLOSED = (IncidentStatus.resolved, IncidentStatus.closed)


async def set_deadline(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    hazard_category: str,
    deadline: datetime,
    by: str,
    reason: str,
    at: datetime,
    event_id: str,
) -> None:
    """Set (or move) the rectification deadline and its timer, in the caller's transaction."""
    await conn.execute(
        """UPDATE incidents SET hazard_category = $2, rectify_by = $3, rectification_overdue = false,
               updated_at = GREATEST(updated_at, $4) WHERE id = $1""",
        row["id"],
        hazard_category,
        deadline,
        at,
    )
    await timers.schedule(
        conn,
        kind=rules.RECTIFICATION_TIMER,
        ref=row["id"],
        due_at=deadline,
        payload={"incident_id": row["id"], "deadline": deadline.isoformat()},
    )
    data = RectificationDeadlineSet(
        incident_id=row["id"],
        hazard_category=hazard_category,
        deadline=deadline,
        previous=row["rectify_by"],
        by=by,
        reason=reason,
        at=at,
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn, incident_id=row["id"], entity="hazard", verb="deadline_set", data=data, at=at, actor=by, event_id=event_id
    )


def _open_hazard(row: asyncpg.Record) -> None:
    if row["kind"] != "hazard":
        raise Problem(409, f"incident {row['id']} is not a hazard (it is a {row['kind']})", type="not-a-hazard")
    if row["status"] in CLOSED:
        raise Problem(
            409,
            f"a hazard that is {row['status']} is not rectified any more; reopen it first",
            type="hazard-settled",
            status_now=row["status"],
        )
    if row["rectified_at"] is not None:
        raise Problem(409, "this hazard was already found rectified", type="already-rectified")


def _future(deadline: datetime, at: datetime, field: str) -> None:
    if deadline <= at:
        raise Problem(
            422,
            "a rectification deadline must lie ahead",
            errors=[{"field": field, "reason": "must be later than now"}],
        )


async def set_deadline_by_hand(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    deadline: datetime | None,
    days: int | None,
    hazard_category: str | None,
    reason: str,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> None:
    _open_hazard(row)
    category = hazard_category or row["hazard_category"] or "other"
    if deadline is None:
        deadline = rules.rectification_due(category, at) if days is None else rules.add_working_days(at, days)
    _future(deadline, at, "body.deadline")
    await set_deadline(
        conn,
        row=row,
        hazard_category=category,
        deadline=deadline,
        by=caller.sub,
        reason=reason,
        at=at,
        event_id=command_id,
    )


async def inspect(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    result: InspectionResult,
    note: str,
    inspected_at: datetime,
    new_deadline: datetime | None,
    new_deadline_days: int | None,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> dict:
    """Record a re-inspection: rectified settles the deadline (and lets the incident be resolved); not rectified
    may set a new deadline."""
    _open_hazard(row)
    if row["rectify_by"] is None:
        raise Problem(409, "this hazard has no rectification deadline to inspect against", type="no-deadline")
    if result == InspectionResult.rectified and (new_deadline or new_deadline_days):
        raise Problem(
            422,
            "a rectified hazard takes no new deadline",
            errors=[{"field": "body.new_deadline", "reason": "only with result not_rectified"}],
        )
    if new_deadline is None and new_deadline_days is not None:
        new_deadline = rules.add_working_days(at, new_deadline_days)
    if new_deadline is not None:
        _future(new_deadline, at, "body.new_deadline")
    inspection_id = derived_id("inspection", command_id)
    await conn.execute(
        """INSERT INTO inspections (id, incident_id, result, note, inspected_at, new_deadline, inspected_by, role,
               recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        inspection_id,
        row["id"],
        result.value,
        note,
        inspected_at,
        new_deadline,
        caller.sub,
        caller.role,
        at,
    )
    if result == InspectionResult.rectified:
        await conn.execute(
            "UPDATE incidents SET rectified_at = $2, updated_at = $3 WHERE id = $1", row["id"], inspected_at, at
        )
        await timers.cancel(conn, kind=rules.RECTIFICATION_TIMER, ref=row["id"])
    else:
        await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", row["id"], at)
    data = HazardInspected(
        incident_id=row["id"],
        inspection_id=inspection_id,
        result=result,
        note=note,
        inspected_at=inspected_at,
        new_deadline=new_deadline,
        by=caller.sub,
        role=caller.role,
        at=at,
        hazard_category=row["hazard_category"],
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn,
        incident_id=row["id"],
        entity="hazard",
        verb="inspected",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=command_id,
    )
    if new_deadline is not None:
        await set_deadline(
            conn,
            row=row,
            hazard_category=row["hazard_category"] or "other",
            deadline=new_deadline,
            by=caller.sub,
            reason=f"re-inspection found it not rectified: {note}" if note else "re-inspection found it not rectified",
            at=at,
            event_id=derived_id("deadline_set", command_id),
        )
    return data.model_dump(mode="json")


def require_rectified(row: asyncpg.Record) -> None:
    """A hazard with a rectification deadline is resolved only once a re-inspection found it rectified."""
    if row["rectify_by"] is not None and row["rectified_at"] is None:
        raise Problem(
            409,
            "this hazard is resolved once a re-inspection finds it rectified (POST .../inspections)",
            type="not-rectified",
            status_now=row["status"],
            rectify_by=row["rectify_by"].isoformat(),
        )


async def fire(conn: asyncpg.Connection, timer: Timer, now: datetime) -> None:
    """The rectification deadline passed: emit the overdue event unless a re-inspection found it rectified."""
    row = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1 FOR UPDATE", timer.payload["incident_id"])
    if row is None or row["merged_into"] is not None or row["rectified_at"] is not None:
        return
    if row["status"] == IncidentStatus.closed or row["rectify_by"] is None:
        return
    deadline = datetime.fromisoformat(timer.payload["deadline"])
    if row["rectify_by"] != deadline:  # moved since; its own timer fires for the new one
        return
    await conn.execute("UPDATE incidents SET rectification_overdue = true WHERE id = $1", row["id"])
    data = RectificationOverdue(
        incident_id=row["id"],
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
        hazard_category=row["hazard_category"] or "other",
        deadline=deadline,
        status=IncidentStatus(row["status"]),
    )
    await journal.record(
        conn,
        incident_id=row["id"],
        entity="hazard",
        verb="rectification_overdue",
        data=data,
        at=timer.due_at,
        actor=SYSTEM,
        event_id=derived_id("rectification_overdue", row["id"], deadline.isoformat()),
    )
