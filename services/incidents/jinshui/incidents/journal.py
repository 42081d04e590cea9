"""Every change to an incident is a timeline entry and an event, written in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from jinshui.contracts.base import Contract
from jinshui.contracts.envelope import new_event
from jinshui.contracts.streams import keyed
from jinshui.kit import outbox

SOURCE = "/jinshui/incidents"
NS = uuid.UUID("0b5e8f36-4a7d-4f52-9d0e-3c1f2a6b7e44")


def derived_id(*parts: str) -> str:
    """Ids derived from the input's ids, so that replaying a stream rebuilds the same state."""
    return str(uuid.uuid5(NS, ":".join(parts)))


async def record(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    verb: str,
    data: Contract,
    at: datetime,
    actor: str,
    event_id: str,
    detail: dict | None = None,
    entity: str = "incident",
) -> None:
    """Append to the incident's timeline and write `org.jinshui.incidents.<entity>.<verb>.v1` to the outbox."""
    event_type = f"org.jinshui.incidents.{entity}.{verb}.v1"
    subject = keyed(f"incidents.{entity}.{verb}", incident_id)
    event = new_event(id=event_id, type=event_type, source=SOURCE, subject=incident_id, time=at, data=data)
    inserted = await conn.fetchval(
        "INSERT INTO timeline (incident_id, at, what, actor, detail, event_id) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING seq",
        incident_id,
        at,
        verb,
        actor,
        detail if detail is not None else data.model_dump(mode="json"),
        event_id,
    )
    if inserted is not None:
        await outbox.add(conn, event=event, subject=subject)
