"""Scope: what a caller may see, from the registry's assignments (grid workers: their grids; officers: their beat).

Each service keeps its own copy of the assignments from REGISTRY events and filters its rows; outside the
scope a row is simply not there (404). A caller with no assignment yet is not narrowed, nor are mediators,
community admins and the integration clients (their reads are checked by role at the door).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.registry import AssignmentChanged
from jinshui.kit.tokens import Identity

ASSIGNMENT_CHANGED = "org.jinshui.registry.assignment.changed.v1"
SUBJECTS = ["registry.assignment.changed", "registry.assignment.changed.>"]
SCOPED_ROLES = ("grid_worker", "police")


@dataclass(frozen=True)
class Scope:
    grids: list[str]
    beats: list[str]


async def keep(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """Apply one `registry.assignment.changed` event to the local copy (a later change wins)."""
    a = AssignmentChanged.model_validate(event.data)
    await conn.execute(
        """INSERT INTO scope_assignments (assignment_id, person, role, area, active, at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (assignment_id) DO UPDATE SET active = $5, at = $6 WHERE scope_assignments.at <= $6""",
        a.assignment_id,
        a.person,
        a.role.value,
        a.area,
        a.change == "assigned",
        a.at,
    )


async def scope_of(conn: asyncpg.Connection | asyncpg.Pool, caller: Identity) -> Scope | None:
    """The caller's grids and beats, or None when their reads are not narrowed."""
    if caller.role not in SCOPED_ROLES:
        return None
    rows = await conn.fetch("SELECT role, area FROM scope_assignments WHERE person = $1 AND active", caller.sub)
    return _scope([(r["role"], r["area"]) for r in rows])


def _scope(assignments: list[tuple[str, str]]) -> Scope | None:
    if not assignments:
        return None
    return Scope(
        grids=sorted({area for role, area in assignments if role == "grid_worker"}),
        beats=sorted({area for role, area in assignments if role == "officer"}),
    )


class Book:
    """The same copy kept in memory, for a process without a database (the gateway's alert feed): fed the
    `registry.assignment.changed` events in stream order, it answers scope_of at once, current to the last event."""

    def __init__(self) -> None:
        self._assignments: dict[str, AssignmentChanged] = {}
        self._by_person: dict[str, Scope | None] = {}

    def apply(self, event: CloudEvent) -> None:
        a = AssignmentChanged.model_validate(event.data)
        known = self._assignments.get(a.assignment_id)
        if known is not None and known.at > a.at:
            return  # a later change wins, as in keep()
        self._assignments[a.assignment_id] = a
        self._by_person.pop(a.person, None)

    def scope_of(self, caller: Identity) -> Scope | None:
        if caller.role not in SCOPED_ROLES:
            return None
        if caller.sub not in self._by_person:
            self._by_person[caller.sub] = _scope(
                [
                    (a.role.value, a.area)
                    for a in self._assignments.values()
                    if a.person == caller.sub and a.change == "assigned"
                ]
            )
        return self._by_person[caller.sub]


def sql(scope: Scope | None, *, first_param: int, grid: str = "grid", beat: str = "beat") -> tuple[str, list]:
    """A WHERE fragment (and its parameters, numbered from `first_param`) keeping rows in the scope."""
    if scope is None:
        return "TRUE", []
    g, b = f"${first_param}::text[]", f"${first_param + 1}::text[]"
    return f"({grid} = ANY({g}) OR {beat} = ANY({b}))", [scope.grids, scope.beats]


def admits(scope: Scope | None, *, grid: str | None, beat: str | None) -> bool:
    """Whether a row of this grid and beat is in the scope."""
    return scope is None or grid in scope.grids or beat in scope.beats
