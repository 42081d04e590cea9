"""Risk handlers: events in, alerts out (through the outbox)."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from pydantic import ValidationError

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import AlertLevel, AlertRaised, Evidence, VisitConcern, VisitRecorded
from jinshui.kit.consumer import Permanent
from jinshui.risk.alerts import derived_id, raise_alert

URGENT_VISIT = "urgent-visit"


async def on_visit_recorded(conn: asyncpg.Connection, event: CloudEvent, *, escalate_after: timedelta) -> None:
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
    await raise_alert(conn, alert=alert, subject_key=visit.household_code, escalate_after=escalate_after)
