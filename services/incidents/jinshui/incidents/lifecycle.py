"""Commands a person waits for: move an incident on, record mediation and satisfaction, link and unlink sources.

Each runs in the caller's transaction and records its events; a refusal raises a Problem and changes nothing.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from jinshui.contracts.incidents import (
    FollowUpRecorded,
    IncidentOpened,
    IncidentStatus,
    IncidentTransitioned,
    MatchReason,
    MediationOutcome,
    MediationRecorded,
    SatisfactionRecorded,
    SourceLinked,
    SourceRef,
    SourceUnlinked,
)
from jinshui.incidents import clocks, hazards, journal, rules
from jinshui.incidents.intake import schedule
from jinshui.incidents.journal import derived_id
from jinshui.kit import timers
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity


async def locked_incident(conn: asyncpg.Connection, incident_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1 FOR UPDATE", incident_id)
    if row is None or row["merged_into"] is not None:
        raise Problem(404, f"no incident {incident_id}")
    return row


def _moves(status: IncidentStatus, role: str) -> list[str]:
    return [m.value for m in rules.MOVES[status] if role in rules.MOVERS[m]]


async def transition(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    to: IncidentStatus,
    reason: str,
    caller: Identity,
    at: datetime,
    command_id: str,
    assignee: str | None = None,
) -> asyncpg.Record:
    """Move the incident to `to`, if that move is allowed from its state and to the caller's role (else 409/403)."""
    row = await locked_incident(conn, incident_id)
    current = IncidentStatus(row["status"])
    if to not in rules.MOVES[current]:
        raise Problem(
            409,
            f"an incident that is {current.value} cannot be moved to {to.value}",
            type="illegal-transition",
            status_now=current.value,
            allowed=[m.value for m in rules.MOVES[current]],
        )
    if caller.role not in rules.MOVERS[to]:
        raise Problem(
            403,
            f"a {caller.role} may not move an incident to {to.value}",
            type="transition-not-for-role",
            status_now=current.value,
            allowed=_moves(current, caller.role),
        )
    if to == IncidentStatus.resolved:
        hazards.require_rectified(row)
    row = await clocks.running(
        conn, row=row, why=f"moved on to {to.value}", by=caller.sub, at=at, command_id=command_id
    )
    await apply_move(
        conn,
        row=row,
        to=to,
        reason=reason,
        by=caller.sub,
        role=caller.role,
        at=at,
        event_id=command_id,
        assignee=assignee,
    )
    return await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)


async def apply_move(
    conn: asyncpg.Connection,
    *,
    row: asyncpg.Record,
    to: IncidentStatus,
    reason: str,
    by: str,
    role: str,
    at: datetime,
    event_id: str,
    assignee: str | None = None,
) -> None:
    """Record a move already checked: the row, the deadlines it settles, the timeline and the event."""
    incident_id, current = row["id"], IncidentStatus(row["status"])
    await conn.execute(
        """UPDATE incidents SET status = $2, updated_at = $3, assignee = COALESCE($4, assignee),
               closed_at = CASE WHEN $2 = 'closed' THEN $3 WHEN $2 = 'reopened' THEN NULL ELSE closed_at END
           WHERE id = $1""",
        incident_id,
        to.value,
        at,
        assignee,
    )
    settled = set()
    if current in (IncidentStatus.reported,):
        settled.add("accept")
    if to in (IncidentStatus.resolved, IncidentStatus.closed):
        settled.add("resolve")
    await cancel_deadlines(conn, incident_id=incident_id, deadlines=sorted(settled))
    if to == IncidentStatus.reopened:  # a reopened incident gets a new time to resolve
        await conn.execute("UPDATE incidents SET overdue = false WHERE id = $1", incident_id)
        await schedule(conn, incident_id=incident_id, category=row["category"], start=at, only=("resolve",))
    data = IncidentTransitioned(
        incident_id=incident_id,
        from_status=current,
        to_status=to,
        by=by,
        role=role,
        reason=reason,
        at=at,
        category=row["category"],
        grid=row["grid"],
        beat=row["beat"],
    )
    detail = data.model_dump(mode="json")
    if assignee:
        detail["assignee"] = assignee
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="transitioned",
        data=data,
        at=at,
        actor=by,
        event_id=event_id,
        detail=detail,
    )


async def cancel_deadlines(conn: asyncpg.Connection, *, incident_id: str, deadlines) -> None:
    for deadline in deadlines:
        for stage in rules.STAGES:
            await timers.cancel(conn, kind=rules.TIMER_KIND, ref=rules.timer_ref(incident_id, deadline, stage))


async def record_mediation(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    mediators: list[str],
    method,
    held_at: datetime,
    outcome: MediationOutcome,
    agreement: str | None,
    notes: str,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> dict:
    row = await locked_incident(conn, incident_id)
    if row["status"] not in (IncidentStatus.in_mediation, IncidentStatus.escalated):
        raise Problem(
            409,
            f"mediation is recorded on an incident in mediation; this one is {row['status']}",
            type="not-in-mediation",
            status_now=row["status"],
        )
    if outcome == MediationOutcome.agreed and not agreement:
        raise Problem(
            422,
            "an agreed mediation needs the agreement",
            errors=[{"field": "agreement", "reason": "required when the outcome is agreed"}],
        )
    mediation_id = derived_id("mediation", command_id)
    await conn.execute(
        """INSERT INTO mediations (id, incident_id, mediators, method, held_at, outcome, agreement, notes,
               recorded_by, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        mediation_id,
        incident_id,
        mediators,
        method.value,
        held_at,
        outcome.value,
        agreement,
        notes,
        caller.sub,
        at,
    )
    await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", incident_id, at)
    data = MediationRecorded(
        incident_id=incident_id,
        mediation_id=mediation_id,
        mediators=mediators,
        method=method,
        held_at=held_at,
        outcome=outcome,
        agreement=agreement,
        by=caller.sub,
        at=at,
    )
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="mediation_recorded",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=command_id,
    )
    return data.model_dump(mode="json")


async def record_satisfaction(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    satisfied: bool,
    score: int | None,
    caller: Identity,
    at: datetime,
    command_id: str,
    row: asyncpg.Record | None = None,
) -> None:
    """The parties' satisfaction, only on an incident being closed (resolved) or closed."""
    row = row or await locked_incident(conn, incident_id)
    if row["status"] not in (IncidentStatus.resolved, IncidentStatus.closed):
        raise Problem(
            409,
            f"satisfaction is recorded at closing; this incident is {row['status']}",
            type="not-being-closed",
            status_now=row["status"],
        )
    await conn.execute(
        "UPDATE incidents SET satisfied = $2, satisfaction_score = $3, updated_at = $4 WHERE id = $1",
        incident_id,
        satisfied,
        score,
        at,
    )
    data = SatisfactionRecorded(incident_id=incident_id, satisfied=satisfied, score=score, by=caller.sub, at=at)
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="satisfaction_recorded",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=command_id,
    )


async def _source(conn: asyncpg.Connection, source_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM sources WHERE id = $1 FOR UPDATE", source_id)
    if row is None:
        raise Problem(404, f"no source {source_id}")
    return row


def _ref(row: asyncpg.Record) -> SourceRef:
    return SourceRef(
        source_id=row["id"],
        origin=row["origin"],
        external_id=row["external_id"],
        category=row["category"],
        person_hashes=list(row["person_hashes"] or []),
    )


async def link(
    conn: asyncpg.Connection, *, incident_id: str, source_id: str, reason: str, caller: Identity, at, command_id: str
) -> None:
    """Move a source into this incident by hand; an incident left with no source is merged into this one."""
    target = await locked_incident(conn, incident_id)
    src = await _source(conn, source_id)
    if src["incident_id"] == incident_id:
        raise Problem(409, f"source {source_id} is already part of incident {incident_id}", type="already-linked")
    if target["status"] == IncidentStatus.closed:
        raise Problem(409, "a closed incident takes no new source; reopen it first", type="incident-closed")
    old = src["incident_id"]
    await locked_incident(conn, old)
    match = MatchReason(fields=["manual"], score=1.0, by=caller.sub, note=reason)
    await conn.execute(
        "UPDATE sources SET incident_id = $2, match = $3 WHERE id = $1",
        source_id,
        incident_id,
        match.model_dump(mode="json"),
    )
    left = await conn.fetchval("SELECT count(*) FROM sources WHERE incident_id = $1", old)
    if left == 0:
        await conn.execute("UPDATE incidents SET merged_into = $2, updated_at = $3 WHERE id = $1", old, incident_id, at)
        await cancel_deadlines(conn, incident_id=old, deadlines=rules.DEADLINE_NAMES)
    await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", incident_id, at)
    # Where the incident is, as correlation says it: rules (risk's rule 1) place their alerts and tasks by it.
    data = SourceLinked(
        incident_id=incident_id,
        source=_ref(src),
        reason=match,
        at=at,
        household_code=target["household_code"],
        grid=target["grid"],
        beat=target["beat"],
    )
    await journal.record(
        conn, incident_id=incident_id, verb="source_linked", data=data, at=at, actor=caller.sub, event_id=command_id
    )


async def unlink(
    conn: asyncpg.Connection, *, incident_id: str, source_id: str, reason: str, caller: Identity, at, command_id: str
) -> str:
    """Take a source out of an incident into a new incident of its own; returns the new incident's id."""
    await locked_incident(conn, incident_id)
    src = await _source(conn, source_id)
    if src["incident_id"] != incident_id:
        raise Problem(404, f"source {source_id} is not part of incident {incident_id}")
    if await conn.fetchval("SELECT count(*) FROM sources WHERE incident_id = $1", incident_id) < 2:
        raise Problem(409, "an incident's only source cannot be unlinked", type="only-source")
    new_id = derived_id("incident", source_id, "unlinked", command_id)
    await conn.execute(
        """INSERT INTO incidents (id, category, kind, status, household_code, address, grid, beat, priority,
               opened_at, updated_at)
           SELECT $2, $3, kind, 'reported', household_code, address_text, grid, beat, priority, occurred_at, $4
           FROM sources WHERE id = $1""",
        source_id,
        new_id,
        rules.category_key(src["origin"], src["category"]),
        at,
    )
    await schedule(conn, incident_id=new_id, category=rules.category_key(src["origin"], src["category"]), start=at)
    await conn.execute("UPDATE sources SET incident_id = $2, match = NULL WHERE id = $1", source_id, new_id)
    await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", incident_id, at)
    data = SourceUnlinked(
        incident_id=incident_id, source=_ref(src), new_incident_id=new_id, by=caller.sub, reason=reason, at=at
    )
    await journal.record(
        conn, incident_id=incident_id, verb="source_unlinked", data=data, at=at, actor=caller.sub, event_id=command_id
    )
    opened = IncidentOpened(
        incident_id=new_id,
        category=rules.category_key(src["origin"], src["category"]),
        kind=src["kind"],
        status=IncidentStatus.reported,
        household_code=src["household_code"],
        address=src["address_text"],
        grid=src["grid"],
        beat=src["beat"],
        priority=src["priority"],
        source=_ref(src),
        opened_at=src["occurred_at"],
    )
    await journal.record(
        conn,
        incident_id=new_id,
        verb="opened",
        data=opened,
        at=at,
        actor=caller.sub,
        event_id=derived_id("opened", new_id),
    )
    return new_id


async def record_follow_up(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    visited_by: str,
    visited_at: datetime,
    note: str,
    still_settled: bool,
    reopen: bool,
    caller: Identity,
    at: datetime,
    command_id: str,
) -> dict:
    """A follow-up visit after closing (事后消解); one that finds it not settled may reopen the incident."""
    row = await locked_incident(conn, incident_id)
    if row["status"] != IncidentStatus.closed:
        raise Problem(
            409,
            f"follow-up visits are recorded after closing; this incident is {row['status']}",
            type="not-closed",
            status_now=row["status"],
        )
    if reopen and still_settled:
        raise Problem(
            422,
            "an incident still settled is not reopened",
            errors=[{"field": "body.reopen", "reason": "only when still_settled is false"}],
        )
    if reopen and caller.role not in rules.MOVERS[IncidentStatus.reopened]:
        raise Problem(
            403,
            f"a {caller.role} may not reopen an incident; record the follow-up and ask a mediator",
            type="transition-not-for-role",
            status_now=row["status"],
            allowed=_moves(IncidentStatus.closed, caller.role),
        )
    follow_up_id = derived_id("follow_up", command_id)
    await conn.execute(
        """INSERT INTO follow_ups (id, incident_id, visited_by, visited_at, note, still_settled, recorded_by,
               recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        follow_up_id,
        incident_id,
        visited_by,
        visited_at,
        note,
        still_settled,
        caller.sub,
        at,
    )
    await conn.execute("UPDATE incidents SET updated_at = $2 WHERE id = $1", incident_id, at)
    data = FollowUpRecorded(
        incident_id=incident_id,
        follow_up_id=follow_up_id,
        visited_by=visited_by,
        visited_at=visited_at,
        note=note,
        still_settled=still_settled,
        by=caller.sub,
        at=at,
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
    )
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="follow_up_recorded",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=command_id,
    )
    if reopen:
        await apply_move(
            conn,
            row=row,
            to=IncidentStatus.reopened,
            reason=f"a follow-up visit found it not settled: {note}" if note else "a follow-up found it not settled",
            by=caller.sub,
            role=caller.role,
            at=at,
            event_id=derived_id("reopened", command_id),
        )
    return data.model_dump(mode="json")
