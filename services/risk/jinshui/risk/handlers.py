"""Risk handlers: events in, alerts out (through the outbox)."""

from __future__ import annotations

import uuid

import asyncpg
from pydantic import ValidationError

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.events import AlertLevel, AlertRaised, Evidence, VisitConcern, VisitRecorded
from jinshui.kit import outbox
from jinshui.kit.consumer import Permanent

SOURCE = "/jinshui/risk"
NS = uuid.UUID("0b7f3c52-5d0e-4b8e-8d55-2a0c6f4f8e21")
URGENT_VISIT = "urgent-visit"


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(NS, ":".join(parts)))


async def on_visit_recorded(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A visit that reports an urgent concern raises a HIGH alert for the household's beat."""
    try:
        visit = VisitRecorded.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid visit: {e.errors()[:3]}") from e
    if VisitConcern.urgent not in visit.concerns:
        return
    alert = AlertRaised(
        alert_id=derived_id(URGENT_VISIT, visit.visit_id),
        rule=URGENT_VISIT,
        level=AlertLevel.HIGH,
        household_code=visit.household_code,
        grid=visit.grid,
        beat=visit.beat,
        explanation=(
            f"grid worker {visit.grid_worker} reported an urgent concern at household "
            f"{visit.household_code} during a visit at {visit.visited_at.isoformat()}"
        ),
        evidence=[Evidence(event_id=event.id, type=event.type, time=event.time)],
        raised_at=event.time,
    )
    inserted = await conn.fetchval(
        """INSERT INTO alerts (id, rule, level, household_code, grid, beat, explanation, evidence, raised_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING 1""",
        alert.alert_id,
        alert.rule,
        alert.level.value,
        alert.household_code,
        alert.grid,
        alert.beat,
        alert.explanation,
        [e.model_dump(mode="json") for e in alert.evidence],
        alert.raised_at,
    )
    if inserted:
        await outbox.add(
            conn,
            event=new_event(
                id=derived_id("alert.raised", alert.alert_id),
                type="org.jinshui.risk.alert.raised.v1",
                source=SOURCE,
                subject=alert.alert_id,
                time=event.time,
                data=alert,
            ),
            subject=streams.keyed(streams.RISK_ALERT_RAISED, alert.beat),
        )
