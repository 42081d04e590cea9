"""Incidents handlers: what the incidents service does with what arrives on INTAKE and REGISTRY."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError

from jinshui.contracts.base import OutcomeStatus, RecordOutcome, SubmissionSettled, Submitter
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.events import HouseholdRegistered, VisitRecorded
from jinshui.contracts.incidents import (
    INCIDENTS_SUBMISSION_SETTLED,
    GridReportRecord,
    PoliceCallRecord,
    PoliceCallsSubmitted,
    ReportsSubmitted,
)
from jinshui.contracts.registry import (
    REGISTRY_VISIT_RECORDED_V2,
    REGISTRY_VISITS_RECORDED,
    VisitRecordedV2,
    VisitsRecorded,
)
from jinshui.contracts.streams import REGISTRY_VISIT_RECORDED
from jinshui.incidents import addresses
from jinshui.incidents.intake import NewSource, NotYetKnown, Rejected, persons_of, take_in
from jinshui.incidents.journal import SOURCE, derived_id
from jinshui.kit import outbox
from jinshui.kit.clock import Clock
from jinshui.kit.consumer import Permanent, Retry

M = TypeVar("M", bound=BaseModel)
# Concerns of a visit that open a report.
VISIT_REPORTS = ("dispute", "hazard")


async def on_household_registered(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """Keep the local copy of households that police calls and reports are matched against."""
    h = _parse(HouseholdRegistered, event, "household")
    await conn.execute(
        """INSERT INTO households (code, address, grid, beat, registered_at, numbers_key)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (code) DO UPDATE SET address = $2, grid = $3, beat = $4, numbers_key = $6""",
        h.code,
        h.address,
        h.grid,
        h.beat,
        h.registered_at,
        addresses.numbers_key(h.address),
    )


def police_call_source(call: PoliceCallRecord, batch: PoliceCallsSubmitted, index: int) -> NewSource:
    return NewSource(
        origin="police_call",
        external_id=call.call_id,
        category=call.category.value,
        occurred_at=call.received_at,
        household_code=call.household_code,
        address_text=call.address,
        description=call.description,
        priority=call.priority,
        persons=persons_of(call.persons),
        submitted_by=batch.submitter.sub,
        submission_id=batch.submission_id,
        record_index=index,
    )


def report_source(report: GridReportRecord, batch: ReportsSubmitted, index: int) -> NewSource:
    return NewSource(
        origin="report",
        external_id=report.report_id or f"{batch.submission_id}:{index}",
        category=report.kind.value,
        occurred_at=report.reported_at,
        household_code=report.household_code,
        address_text=report.address,
        description=report.description,
        hazard_category=report.hazard_category.value if report.hazard_category else None,
        rectification_deadline=report.rectification_deadline,
        photos=list(report.photos),
        persons=persons_of(report.persons),
        submitted_by=batch.submitter.sub,
        submission_id=batch.submission_id,
        record_index=index,
    )


async def take_in_batch(
    conn: asyncpg.Connection,
    event: CloudEvent,
    *,
    model: type[PoliceCallsSubmitted] | type[ReportsSubmitted],
    to_source: Callable,
    clock: Clock,
    reference_grace_seconds: float,
) -> None:
    """Apply each record of a submitted batch; every record gets an outcome, settled in the same transaction.

    A household not yet in the local copy is waited for (the batch is retried) while the submission is young;
    after that the record is rejected.
    """
    batch = _parse(model, event, "batch")
    young = (clock.now() - batch.received_at).total_seconds() < reference_grace_seconds
    outcomes: list[RecordOutcome] = []
    for index, record in enumerate(batch.records):
        try:
            async with conn.transaction():
                incident_id = await take_in(conn, to_source(record, batch, index), at=event.time)
        except Rejected as e:
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=str(e)))
            continue
        except NotYetKnown as e:
            if young:
                raise Retry(str(e), delay=5.0) from e
            outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.rejected, reason=str(e)))
            continue
        outcomes.append(RecordOutcome(index=index, status=OutcomeStatus.applied, ref=incident_id))
    await settle(conn, submission_id=batch.submission_id, outcomes=outcomes, at=event.time)


async def settle(conn: asyncpg.Connection, *, submission_id: str, outcomes: list[RecordOutcome], at: datetime) -> None:
    settled = new_event(
        id=derived_id("settled", submission_id),
        type="org.jinshui.incidents.submission.settled.v1",
        source=SOURCE,
        subject=submission_id,
        time=at,
        data=SubmissionSettled(submission_id=submission_id, outcomes=outcomes),
    )
    await outbox.add(conn, event=settled, subject=INCIDENTS_SUBMISSION_SETTLED)


# visit.recorded, both versions: v2 is taken as it is, v1 as the v2 it would have been (what it lacks left
# empty). The effects are keyed by the visit (its id and concern), so the same visit in both versions (the
# registry publishes both while consumers move over) is taken in once. See proto/CONTRACTS.md.
VISIT_RECORDED_V1 = "org.jinshui.registry.visit.recorded.v1"
VISIT_RECORDED_V2 = "org.jinshui.registry.visit.recorded.v2"
VISITS_RECORDED = "org.jinshui.registry.visits.recorded.v1"
VISIT_SUBJECTS = [
    REGISTRY_VISIT_RECORDED + ".>",
    REGISTRY_VISIT_RECORDED_V2 + ".>",
    REGISTRY_VISITS_RECORDED + ".>",
]


def _visits(event: CloudEvent) -> list[VisitRecordedV2]:
    if event.type == VISITS_RECORDED:
        return _parse(VisitsRecorded, event, "batch of visits").visits
    if event.type == VISIT_RECORDED_V2:
        return [_parse(VisitRecordedV2, event, "visit")]
    if event.type != VISIT_RECORDED_V1:
        raise Permanent(f"incidents does not take {event.type} on the visit subjects")
    v1 = _parse(VisitRecorded, event, "visit")
    v2 = VisitRecordedV2(
        **v1.model_dump(exclude={"grid_worker"}),
        visited_by=Submitter(sub=v1.grid_worker, role="grid_worker"),
        people_present=0,
        persons_present=[],
    )
    return [v2]


async def on_visit_recorded(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A visit whose concerns include a dispute or a hazard also opens (or joins) a report; the visits of a batch
    (visits.recorded) are taken one by one, and most of them, with no such concern, cost nothing."""
    for visit in _visits(event):
        await _take_in_visit(conn, visit, at=event.time)


async def _take_in_visit(conn: asyncpg.Connection, visit: VisitRecordedV2, *, at) -> None:
    for concern in visit.concerns:
        if concern.value not in VISIT_REPORTS:
            continue
        src = NewSource(
            origin="visit",
            external_id=f"{visit.visit_id}:{concern.value}",
            category=concern.value,
            occurred_at=visit.visited_at,
            household_code=visit.household_code,
            submitted_by=visit.visited_by.sub,
            submission_id=visit.submission_id,
            record_index=visit.record_index,
            grid=visit.grid,
            beat=visit.beat,
        )
        try:
            await take_in(conn, src, at=at)
        except Rejected:  # the same visit again: already taken in
            continue


def _parse(model: type[M], event: CloudEvent, what: str) -> M:
    try:
        return model.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid {what}: {e.errors()[:3]}") from e
