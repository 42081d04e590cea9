"""What the registry writes besides its tables: events through the kit's outbox, and the history rows."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import asyncpg

from jinshui.contracts import registry as contracts
from jinshui.contracts import streams
from jinshui.contracts.base import Contract
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.events import TYPE_OF
from jinshui.kit import outbox

SOURCE = "/jinshui/registry"
NS = contracts.REGISTRY_NS
_NS = NS.bytes

# The subject each event type is published on (the ordering key is appended).
SUBJECT_OF: dict[type[Contract], str] = {
    contracts.HouseholdRegistered: streams.REGISTRY_HOUSEHOLD_REGISTERED,
    contracts.VisitRecorded: streams.REGISTRY_VISIT_RECORDED,
    contracts.VisitRecordedV2: contracts.REGISTRY_VISIT_RECORDED_V2,
    contracts.VisitsRecorded: contracts.REGISTRY_VISITS_RECORDED,
    contracts.SubmissionSettled: streams.REGISTRY_SUBMISSION_SETTLED,
    contracts.GridDefined: contracts.REGISTRY_GRID_DEFINED,
    contracts.BeatDefined: contracts.REGISTRY_BEAT_DEFINED,
    contracts.CoverageChanged: contracts.REGISTRY_COVERAGE_CHANGED,
    contracts.AssignmentChanged: contracts.REGISTRY_ASSIGNMENT_CHANGED,
    contracts.ResidentArrived: contracts.REGISTRY_RESIDENT_ARRIVED,
    contracts.ResidentDeparted: contracts.REGISTRY_RESIDENT_DEPARTED,
    contracts.LettingRegistered: contracts.REGISTRY_LETTING_REGISTERED,
    contracts.LettingStopped: contracts.REGISTRY_LETTING_STOPPED,
    contracts.ResidencyRenewed: contracts.REGISTRY_RESIDENCY_RENEWED,
    contracts.ResidencyExpired: contracts.REGISTRY_RESIDENCY_EXPIRED,
    contracts.TagSet: contracts.REGISTRY_TAG_SET,
    contracts.TagEnded: contracts.REGISTRY_TAG_ENDED,
    contracts.HouseholdsImported: contracts.REGISTRY_HOUSEHOLDS_IMPORTED,
    contracts.ResidentsImported: contracts.REGISTRY_RESIDENTS_IMPORTED,
    contracts.UnitRegistered: contracts.REGISTRY_UNIT_REGISTERED,
    contracts.RecordCorrected: contracts.REGISTRY_RECORD_CORRECTED,
    contracts.RecordVoided: contracts.REGISTRY_RECORD_VOIDED,
    contracts.PersonDied: contracts.REGISTRY_PERSON_DIED,
    contracts.PersonsMerged: contracts.REGISTRY_PERSONS_MERGED,
    contracts.HouseholdSplit: contracts.REGISTRY_HOUSEHOLD_SPLIT,
    contracts.HouseholdsMerged: contracts.REGISTRY_HOUSEHOLDS_MERGED,
}


def derived_id(*parts: str) -> str:
    """Ids derived from the input's ids, so that replaying a stream rebuilds the same state: uuid5 in the registry's
    namespace, its text made without a UUID object (an import derives millions, a batch of visits hundreds)."""
    digest = bytearray(hashlib.sha1(_NS + ":".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def event(data: Contract, *, id: str, key: str | None, time: datetime) -> tuple[CloudEvent, str]:
    """The event for `data` and its subject (keyed by `key` when given: a household code, an area)."""
    return raw_event(type(data), data, id=id, key=key, time=time)


def raw_event(
    model: type[Contract], data: Contract | dict[str, Any], *, id: str, key: str | None, time: datetime
) -> tuple[CloudEvent, str]:
    """As `event`, also for data of `model` already in its JSON form (a hot path that builds it without the model)."""
    subject = SUBJECT_OF[model]
    made = new_event(id=id, type=TYPE_OF[model], source=SOURCE, subject=key, time=time, data=data)
    return made, streams.keyed(subject, key) if key else subject


async def emit(conn: asyncpg.Connection, data: Contract, *, id: str, key: str | None, time: datetime) -> None:
    """Record one event in the caller's transaction."""
    await outbox.add_many(conn, [event(data, id=id, key=key, time=time)])


async def history(
    conn: asyncpg.Connection,
    *,
    household_code: str,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    at: datetime,
    data: dict[str, Any] | None = None,
    submission_id: str | None = None,
) -> None:
    """One version of a household's file (a replayed change is recorded once)."""
    await conn.execute(
        """INSERT INTO history (household_code, entity, entity_id, action, data, actor, submission_id, at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (entity, entity_id, action) DO NOTHING""",
        household_code,
        entity,
        entity_id,
        action,
        data or {},
        actor,
        submission_id,
        at,
    )
