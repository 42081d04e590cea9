"""The close-out ledger of key persons (销号式管理台账): opened by rules (a tag, or any rule's `ledger` effect),
followed up by visits to the person's household, reviewed by a timer (rule 6), closed (销号) only by two
signatures, a police user's and a community admin's, each with a reason; a closed entry stays visible."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.registry import ResidentArrived, VisitRecorded
from jinshui.contracts.risk import (
    Evidence,
    LedgerEntryChanged,
    LedgerReviewMissed,
    LedgerSignature,
    SignerRole,
)
from jinshui.kit import outbox, timers
from jinshui.kit.problems import Problem
from jinshui.risk.alerts import SOURCE, derived_id
from jinshui.risk.rules import lookup, render

log = logging.getLogger(__name__)
REVIEW = "ledger-review"
REVIEW_MISSED = "org.jinshui.risk.ledger.review_missed.v1"
COLUMNS = (
    "id, rule, person_hash, household_code, grid, beat, reason, interval_days, status, opened_at,"
    " last_follow_up_at, next_review_at, misses, closed_at, evidence, updated_at"
)


def _evidence(event: CloudEvent) -> list[dict]:
    return [Evidence(event_id=event.id, type=event.type, time=event.time).model_dump(mode="json")]


async def open_entry(conn: asyncpg.Connection, *, rule: str, effect, event: CloudEvent) -> str | None:
    """Open an entry for the person the event names (or add the event to their open entry of this rule)."""
    d = event.data
    person, grid, beat = lookup(d, effect.person), lookup(d, effect.grid), lookup(d, effect.beat)
    if not person or grid is None or beat is None:
        log.warning("ledger entry not opened: the event names no person, grid or beat", extra={"rule": rule})
        return None
    open_id = await conn.fetchval(
        "SELECT id FROM ledger_entries WHERE rule = $1 AND person_hash = $2 AND status = 'open'", rule, person
    )
    if open_id is not None:
        added = await conn.fetchval(
            """UPDATE ledger_entries SET evidence = evidence || $2::jsonb, updated_at = $3
               WHERE id = $1 AND NOT evidence @> $2::jsonb RETURNING id""",
            open_id,
            _evidence(event),
            event.time,
        )
        if added:
            await _history(conn, open_id, event.time, "evidence_added", None, None, _evidence(event))
        return open_id
    interval = float(effect.interval_days)
    due = event.time + timedelta(days=interval)
    entry_id = derived_id("ledger", rule, str(person), event.id)
    row = await conn.fetchrow(
        f"""INSERT INTO ledger_entries (id, rule, person_hash, household_code, grid, beat, reason, interval_days,
                                       opened_at, next_review_at, evidence, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $9) ON CONFLICT (id) DO NOTHING
            RETURNING {COLUMNS}""",
        entry_id,
        rule,
        str(person),
        lookup(d, effect.household),
        grid,
        beat,
        render(effect.reason, d),
        interval,
        event.time,
        due,
        _evidence(event),
    )
    if row is None:
        return entry_id  # a replay
    await timers.schedule(conn, kind=REVIEW, ref=entry_id, due_at=due)
    await _history(conn, entry_id, event.time, "opened", None, row["reason"], _evidence(event))
    await _publish(conn, row, "opened", event.time, evidence=_evidence(event))
    return entry_id


async def follow_up(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A visit to the household of a key person with an open entry is a follow-up: the review clock restarts."""
    visit = VisitRecorded.model_validate(event.data)
    rows = await conn.fetch(
        f"""UPDATE ledger_entries
            SET last_follow_up_at = greatest(last_follow_up_at, $2), misses = 0, updated_at = $3,
                next_review_at = greatest(last_follow_up_at, $2) + make_interval(secs => interval_days * 86400)
            WHERE household_code = $1 AND status = 'open' AND opened_at <= $2 RETURNING {COLUMNS}""",
        visit.household_code,
        visit.visited_at,
        event.time,
    )
    for row in rows:
        await timers.schedule(conn, kind=REVIEW, ref=row["id"], due_at=row["next_review_at"])
        reason = f"visit {visit.visit_id} by {visit.grid_worker}"
        await _history(conn, row["id"], visit.visited_at, "followed_up", visit.grid_worker, reason, _evidence(event))
        await _publish(conn, row, "followed_up", event.time, by=visit.grid_worker, evidence=_evidence(event))


async def moved(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A key person arrived at another household: their open entries follow them there."""
    arrival = ResidentArrived.model_validate(event.data)
    await conn.execute(
        """UPDATE ledger_entries SET household_code = $2, grid = $3, beat = $4, updated_at = $5
           WHERE person_hash = $1 AND status = 'open' AND household_code IS DISTINCT FROM $2""",
        arrival.id_hash,
        arrival.household_code,
        arrival.grid,
        arrival.beat,
        event.time,
    )


async def tag_ended(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A key person's tag ended: noted on their open entries for the signers; closing still takes two signatures."""
    d = event.data
    if not d.get("id_hash"):
        return
    ids = await conn.fetch("SELECT id FROM ledger_entries WHERE person_hash = $1 AND status = 'open'", d["id_hash"])
    for r in ids:
        reason = f"tag {d['tag']} ended on {d['ended_on']}: {d['reason']}"
        await _history(conn, r["id"], event.time, "tag_ended", d.get("ended_by"), reason, _evidence(event))


async def review_due(conn: asyncpg.Connection, timer: timers.Timer, now: datetime) -> list[CloudEvent]:
    """Rule 6's window: no follow-up within the interval. The entry counts a miss and is due again one interval
    later; the `review_missed` event goes out and through the rules (a task; an alert when missed twice)."""
    row = await conn.fetchrow(
        f"""UPDATE ledger_entries SET misses = misses + 1, updated_at = $2,
                   next_review_at = $2 + make_interval(secs => interval_days * 86400)
            WHERE id = $1 AND status = 'open' AND next_review_at = $2 RETURNING {COLUMNS}""",
        timer.ref,
        timer.due_at,
    )
    if row is None:
        return []  # closed, or followed up in between (the timer moved)
    await timers.schedule(conn, kind=REVIEW, ref=row["id"], due_at=row["next_review_at"])
    missed = LedgerReviewMissed(
        entry_id=row["id"],
        rule=row["rule"],
        person_hash=row["person_hash"],
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
        misses=row["misses"],
        interval_days=row["interval_days"],
        due_at=timer.due_at,
        last_follow_up_at=row["last_follow_up_at"],
    )
    event = new_event(
        id=derived_id("ledger.review_missed", row["id"], timer.due_at.isoformat()),
        type=REVIEW_MISSED,
        source=SOURCE,
        subject=row["id"],
        time=timer.due_at,
        data=missed,
    )
    await outbox.add(conn, event=event, subject=streams.keyed(f"{streams.RISK_LEDGER}.review_missed", row["grid"]))
    await _history(conn, row["id"], timer.due_at, "review_missed", None, f"{row['misses']} missed", _evidence(event))
    return [event]


async def sign(
    conn: asyncpg.Connection, *, entry_id: str, role: SignerRole, by: str, reason: str, at: datetime
) -> None:
    """One of the two signatures; the entry closes when both (a police user's, a community admin's) are in."""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM ledger_entries WHERE id = $1 FOR UPDATE", entry_id)
    if row is None:
        raise Problem(404, f"no ledger entry {entry_id}")
    if row["status"] != "open":
        raise Problem(409, "the entry is closed already", type="already-closed", status_now=row["status"])
    signed = await conn.fetch("SELECT role, by FROM ledger_signatures WHERE entry_id = $1", entry_id)
    for s in signed:
        if s["role"] == role.value:
            raise Problem(
                409,
                f"the entry has the {role.value} signature already (by {s['by']}); it needs the other one",
                type="already-signed",
                signed_by=[dict(x) for x in signed],
            )
        if s["by"] == by:
            raise Problem(
                409,
                f"{by} signed this entry already; closing needs two different people",
                type="already-signed",
                signed_by=[dict(x) for x in signed],
            )
    await conn.execute(
        "INSERT INTO ledger_signatures (entry_id, role, by, reason, at) VALUES ($1, $2, $3, $4, $5)",
        entry_id,
        role.value,
        by,
        reason,
        at,
    )
    await _history(conn, entry_id, at, "signed", by, f"{role.value}: {reason}", None)
    await _publish(conn, row, "signed", at, by=by, reason=reason)
    if len(signed) + 1 < len(SignerRole):
        return
    row = await conn.fetchrow(
        f"""UPDATE ledger_entries SET status = 'closed', closed_at = $2, next_review_at = NULL, updated_at = $2
            WHERE id = $1 RETURNING {COLUMNS}""",
        entry_id,
        at,
    )
    await timers.cancel(conn, kind=REVIEW, ref=entry_id)
    await _history(conn, entry_id, at, "closed", by, "both signatures in", None)
    await _publish(conn, row, "closed", at, by=by)


async def _history(conn, entry_id, at, what, by, reason, evidence) -> None:
    await conn.execute(
        "INSERT INTO ledger_history (entry_id, at, what, by, reason, evidence) VALUES ($1, $2, $3, $4, $5, $6)",
        entry_id,
        at,
        what,
        by,
        reason,
        evidence,
    )


async def _publish(conn, row, verb: str, at: datetime, *, by=None, reason=None, evidence=None) -> None:
    signatures = await conn.fetch(
        "SELECT role, by, reason, at FROM ledger_signatures WHERE entry_id = $1 ORDER BY at", row["id"]
    )
    data = LedgerEntryChanged(
        entry_id=row["id"],
        rule=row["rule"],
        person_hash=row["person_hash"],
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
        status=row["status"],
        interval_days=row["interval_days"],
        next_review_at=row["next_review_at"],
        misses=row["misses"],
        by=by,
        reason=reason,
        signatures=[LedgerSignature(**dict(s)) for s in signatures],
        evidence=evidence or [],
        at=at,
    )
    n = await conn.fetchval("SELECT count(*) FROM ledger_history WHERE entry_id = $1", row["id"])
    event = new_event(
        id=derived_id("ledger", verb, row["id"], str(n)),
        type=f"org.jinshui.risk.ledger.{verb}.v1",
        source=SOURCE,
        subject=row["id"],
        time=at,
        data=data,
    )
    await outbox.add(conn, event=event, subject=streams.keyed(f"{streams.RISK_LEDGER}.{verb}", row["grid"]))
