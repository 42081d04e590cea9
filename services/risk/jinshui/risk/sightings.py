"""Gate sightings matched against watch-lists from an in-memory index kept in step with the table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from pydantic import ValidationError

from jinshui.contracts import streams
from jinshui.contracts.base import OutcomeStatus, RecordOutcome, SubmissionSettled
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.risk import AlertLevel, AlertRaised, Evidence, SightingsSubmitted, normalize_plate
from jinshui.kit import outbox
from jinshui.kit.clock import Clock
from jinshui.kit.consumer import Permanent
from jinshui.risk.alerts import SOURCE, derived_id, raise_alert

WATCHLIST = "watchlist"


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    match_key: str
    masked: str
    level: str
    reason: str
    expires_at: datetime | None


class WatchIndex:
    """plate / person hash -> active entries; reloaded whenever the table's version moves."""

    def __init__(self) -> None:
        self.version = -1
        self.by_key: dict[tuple[str, str], list[Entry]] = {}

    async def refresh(self, conn: asyncpg.Connection) -> None:
        version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM watch_entries")
        if version == self.version:
            return
        rows = await conn.fetch(
            "SELECT id, kind, match_key, masked, level, reason, expires_at FROM watch_entries WHERE removed_at IS NULL"
        )
        by_key: dict[tuple[str, str], list[Entry]] = {}
        for r in rows:
            by_key.setdefault((r["kind"], r["match_key"]), []).append(Entry(**dict(r)))
        self.by_key, self.version = by_key, version

    def match(self, *, plate: str | None, person_hash: str | None, at: datetime) -> list[Entry]:
        found: list[Entry] = []
        if plate:
            found += self.by_key.get(("plate", normalize_plate(plate)), [])
        if person_hash:
            found += self.by_key.get(("person", person_hash), [])
        return [e for e in found if e.expires_at is None or e.expires_at > at]


async def on_sightings(
    conn: asyncpg.Connection,
    event: CloudEvent,
    *,
    index: WatchIndex,
    clock: Clock,
    escalate_after: timedelta,
    future_tolerance: timedelta,
) -> None:
    """Check every sighting of a batch; only matches are kept, with their evidence, and raise alerts."""
    try:
        batch = SightingsSubmitted.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid sightings batch: {e.errors()[:3]}") from e
    await index.refresh(conn)
    gates = {
        r["code"]: r
        for r in await conn.fetch(
            "SELECT code, name, grid, beat FROM gates WHERE code = ANY($1::text[])",
            list({s.gate for s in batch.records}),
        )
    }
    latest = max(clock.now(), batch.received_at) + future_tolerance
    outcomes: list[RecordOutcome] = []
    for i, sighting in enumerate(batch.records):
        gate = gates.get(sighting.gate)
        if gate is None:
            outcomes.append(
                RecordOutcome(index=i, status=OutcomeStatus.rejected, reason=f"unknown gate {sighting.gate}")
            )
            continue
        if sighting.seen_at > latest:
            reason = f"seen_at {sighting.seen_at.isoformat()} is in the future"
            outcomes.append(RecordOutcome(index=i, status=OutcomeStatus.rejected, reason=reason))
            continue
        for entry in index.match(plate=sighting.plate, person_hash=sighting.person_hash, at=sighting.seen_at):
            await _hit(conn, event, batch, i, sighting, gate, entry, escalate_after)
        outcomes.append(RecordOutcome(index=i, status=OutcomeStatus.applied))
    settled = new_event(
        id=derived_id("settled", batch.submission_id),
        type="org.jinshui.risk.submission.settled.v1",
        source=SOURCE,
        subject=batch.submission_id,
        time=event.time,
        data=SubmissionSettled(submission_id=batch.submission_id, outcomes=outcomes),
    )
    await outbox.add(conn, event=settled, subject=streams.RISK_SUBMISSION_SETTLED)


async def _hit(conn, event, batch, index, sighting, gate, entry: Entry, escalate_after) -> None:
    hit_id = derived_id("hit", batch.submission_id, str(index), entry.id)
    what = f"plate {entry.masked}" if entry.kind == "plate" else f"person {entry.masked}"
    alert = AlertRaised(
        alert_id=derived_id(WATCHLIST, hit_id),
        rule=WATCHLIST,
        level=AlertLevel(entry.level),
        grid=gate["grid"],
        beat=gate["beat"],
        explanation=(
            f"watch-listed {what} seen at gate {gate['code']} ({gate['name']}) at {sighting.seen_at.isoformat()}, "
            f"confidence {sighting.confidence:.2f}; on the list because: {entry.reason}"
        ),
        evidence=[Evidence(event_id=event.id, type=event.type, time=sighting.seen_at)],
        raised_at=event.time,
    )
    alert_id = await raise_alert(conn, alert=alert, subject_key=entry.id, escalate_after=escalate_after)
    await conn.execute(
        """INSERT INTO watch_hits (id, entry_id, alert_id, gate, seen_at, confidence, event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING""",
        hit_id,
        entry.id,
        alert_id,
        gate["code"],
        sighting.seen_at,
        sighting.confidence,
        event.id,
    )
