"""Registry handlers: what the registry does with what arrives on INTAKE."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from pydantic import ValidationError

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.events import (
    OutcomeStatus,
    RecordOutcome,
    SubmissionSettled,
    VisitRecorded,
    VisitsSubmitted,
)
from jinshui.kit import outbox
from jinshui.kit.clock import Clock
from jinshui.kit.consumer import Permanent

SOURCE = "/jinshui/registry"
NS = uuid.UUID("6f1c1f7e-8f4e-4a43-9b7a-6a1f0d6c2b11")
FUTURE_TOLERANCE = timedelta(minutes=5)


def derived_id(*parts: str) -> str:
    """Ids derived from the input's ids, so that replaying a stream rebuilds the same state."""
    return str(uuid.uuid5(NS, ":".join(parts)))


async def record_visits(conn: asyncpg.Connection, event: CloudEvent, *, clock: Clock) -> None:
    """Record each visit of a submitted batch; every record gets an outcome, settled in the same transaction."""
    try:
        batch = VisitsSubmitted.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid visit batch: {e.errors()[:3]}") from e
    codes = sorted({r.household_code for r in batch.records})
    households = {
        r["code"]: r
        for r in await conn.fetch("SELECT code, grid, beat FROM households WHERE code = ANY($1::text[])", codes)
    }
    latest_allowed = max(clock.now(), batch.received_at) + FUTURE_TOLERANCE
    outcomes: list[RecordOutcome] = []
    rows, events = [], []
    for index, record in enumerate(batch.records):
        household = households.get(record.household_code)
        if household is None:
            reason = f"household {record.household_code} is not registered"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        if record.visited_at > latest_allowed:
            reason = f"visited_at {record.visited_at.isoformat()} is in the future"
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=reason))
            continue
        visit_id = derived_id("visit", batch.submission_id, str(index))
        rows.append(
            (
                visit_id,
                record.household_code,
                batch.submitter.sub,
                record.visited_at,
                [c.value for c in record.concerns],
                record.people_present,
                record.follow_up_requested,
                record.note,
                batch.submission_id,
                index,
                event.time,
            )
        )
        recorded = VisitRecorded(
            visit_id=visit_id,
            household_code=record.household_code,
            grid=household["grid"],
            beat=household["beat"],
            grid_worker=batch.submitter.sub,
            visited_at=record.visited_at,
            concerns=record.concerns,
            follow_up_requested=record.follow_up_requested,
            submission_id=batch.submission_id,
            record_index=index,
        )
        events.append(
            (
                new_event(
                    id=derived_id("visit.recorded", visit_id),
                    type="org.jinshui.registry.visit.recorded.v1",
                    source=SOURCE,
                    subject=record.household_code,
                    time=event.time,
                    data=recorded,
                ),
                streams.keyed(streams.REGISTRY_VISIT_RECORDED, record.household_code),
            )
        )
        outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.applied, ref=visit_id))
    if rows:
        await conn.executemany(
            """INSERT INTO visits (id, household_code, grid_worker, visited_at, concerns, people_present,
                                   follow_up_requested, note, submission_id, record_index, recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING""",
            rows,
        )
    settled = new_event(
        id=derived_id("settled", batch.submission_id),
        type="org.jinshui.registry.submission.settled.v1",
        source=SOURCE,
        subject=batch.submission_id,
        time=event.time,
        data=SubmissionSettled(submission_id=batch.submission_id, outcomes=outcomes),
    )
    await outbox.add_many(conn, [*events, (settled, streams.REGISTRY_SUBMISSION_SETTLED)])
