"""Incidents handlers."""

from __future__ import annotations

import asyncpg
from pydantic import ValidationError

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import HouseholdRegistered
from jinshui.kit.consumer import Permanent


async def on_household_registered(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """Keep the local copy of households that police calls and reports are matched against."""
    try:
        h = HouseholdRegistered.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid household: {e.errors()[:3]}") from e
    await conn.execute(
        """INSERT INTO households (code, address, grid, beat, registered_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (code) DO UPDATE SET address = $2, grid = $3, beat = $4""",
        h.code,
        h.address,
        h.grid,
        h.beat,
        h.registered_at,
    )
