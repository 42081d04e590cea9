"""Areas, set up synchronously by community admins: grids (网格), police beats (警格), coverage, assignments."""

from __future__ import annotations

from typing import Literal

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts.base import AreaCode
from jinshui.contracts.registry import AssignmentChanged, AssignmentRole, BeatDefined, CoverageChanged, GridDefined
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.problems import Problem
from jinshui.registry.outbox import derived_id, emit

router = APIRouter(prefix="/v1")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewGrid(Body):
    code: AreaCode
    name: str = Field(min_length=1, max_length=100)
    community: str = Field(default="金水社区", min_length=1, max_length=100)
    beat: AreaCode | None = Field(default=None, description="the police beat covering this grid")


class NewBeat(Body):
    code: AreaCode
    name: str = Field(min_length=1, max_length=100)
    grids: list[AreaCode] = Field(default_factory=list, max_length=200)


class Coverage(Body):
    grids: list[AreaCode] = Field(max_length=200)


class NewAssignment(Body):
    person: str = Field(min_length=1, max_length=128, description="the person's subject, as in their token")
    role: AssignmentRole
    area: AreaCode


def unprocessable(field: str, reason: str) -> Problem:
    return Problem(422, f"{field}: {reason}", type="validation-error", errors=[{"field": field, "reason": reason}])


@router.post("/grids", status_code=201)
async def define_grid(body: NewGrid, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO grids (code, name, community, defined_at, defined_by) VALUES ($1, $2, $3, $4, $5)",
                body.code,
                body.name,
                body.community,
                now,
                caller.sub,
            )
        except asyncpg.UniqueViolationError:
            raise Problem(409, f"grid {body.code} is already defined", type="duplicate") from None
        data = GridDefined(code=body.code, name=body.name, community=body.community, defined_at=now)
        await emit(conn, data, id=derived_id("grid.defined", body.code), key=body.code, time=now)
        if body.beat:
            await _cover(conn, beat=body.beat, grids=[body.code], replace=False, now=now, field="body.beat")
    return {"code": body.code, "name": body.name, "community": body.community, "beat": body.beat}


@router.post("/beats", status_code=201)
async def define_beat(body: NewBeat, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO beats (code, name, defined_at, defined_by) VALUES ($1, $2, $3, $4)",
                body.code,
                body.name,
                now,
                caller.sub,
            )
        except asyncpg.UniqueViolationError:
            raise Problem(409, f"beat {body.code} is already defined", type="duplicate") from None
        await emit(
            conn,
            BeatDefined(code=body.code, name=body.name, defined_at=now),
            id=derived_id("beat.defined", body.code),
            key=body.code,
            time=now,
        )
        if body.grids:
            await _cover(conn, beat=body.code, grids=body.grids, replace=True, now=now, field="body.grids")
    return {"code": body.code, "name": body.name, "grids": body.grids}


@router.put("/beats/{code}/grids")
async def set_coverage(code: str, body: Coverage, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM beats WHERE code = $1", code):
            raise Problem(404, f"no beat {code}")
        await _cover(conn, beat=code, grids=body.grids, replace=True, now=now, field="body.grids")
    return {"code": code, "grids": body.grids}


async def _cover(conn, *, beat: str, grids: list[str], replace: bool, now, field: str) -> None:
    """Make `beat` cover `grids` (with `replace`, exactly those); one event says what changed."""
    if not await conn.fetchval("SELECT 1 FROM beats WHERE code = $1", beat):
        raise unprocessable(field, f"unknown beat {beat}")
    known = {r["code"] for r in await conn.fetch("SELECT code FROM grids WHERE code = ANY($1::text[])", grids)}
    for i, grid in enumerate(grids):
        if grid not in known:
            raise unprocessable(f"{field}[{i}]" if field.endswith("grids") else field, f"unknown grid {grid}")
    rows = await conn.fetch("SELECT grid, beat FROM coverage WHERE grid = ANY($1::text[])", grids)
    before = {r["grid"]: r["beat"] for r in rows}
    if replace:
        await conn.execute("DELETE FROM coverage WHERE beat = $1 AND NOT (grid = ANY($2::text[]))", beat, grids)
    await conn.executemany(
        """INSERT INTO coverage (grid, beat, since) VALUES ($1, $2, $3)
           ON CONFLICT (grid) DO UPDATE SET beat = EXCLUDED.beat, since = EXCLUDED.since
           WHERE coverage.beat <> EXCLUDED.beat""",
        [(g, beat, now) for g in grids],
    )
    await conn.execute("UPDATE households SET beat = $1 WHERE grid = ANY($2::text[])", beat, grids)
    covered = [r["grid"] for r in await conn.fetch("SELECT grid FROM coverage WHERE beat = $1 ORDER BY grid", beat)]
    moved = {g: b for g, b in before.items() if b != beat}
    data = CoverageChanged(beat=beat, grids=covered, moved_from=moved, changed_at=now)
    await emit(conn, data, id=derived_id("coverage", beat, now.isoformat()), key=beat, time=now)
    for old in sorted(set(moved.values())):
        rest = [r["grid"] for r in await conn.fetch("SELECT grid FROM coverage WHERE beat = $1 ORDER BY grid", old)]
        data = CoverageChanged(beat=old, grids=rest, changed_at=now)
        await emit(conn, data, id=derived_id("coverage", old, now.isoformat()), key=old, time=now)


@router.get("/grids")
async def grids(pool: PoolDep, caller: CallerDep):
    rows = await pool.fetch(
        """SELECT g.code, g.name, g.community, c.beat,
                  coalesce(array_agg(a.person ORDER BY a.person) FILTER (WHERE a.id IS NOT NULL), '{}') AS grid_workers,
                  (SELECT count(*) FROM households h WHERE h.grid = g.code) AS households
           FROM grids g LEFT JOIN coverage c ON c.grid = g.code
           LEFT JOIN assignments a ON a.area = g.code AND a.role = 'grid_worker' AND a.until IS NULL
           GROUP BY g.code, c.beat ORDER BY g.code"""
    )
    return {"grids": [dict(r) for r in rows]}


@router.get("/beats")
async def beats(pool: PoolDep, caller: CallerDep):
    rows = await pool.fetch(
        """SELECT b.code, b.name,
                  coalesce((SELECT array_agg(grid ORDER BY grid) FROM coverage WHERE beat = b.code), '{}') AS grids,
                  coalesce((SELECT array_agg(person ORDER BY person) FROM assignments
                            WHERE area = b.code AND role = 'officer' AND until IS NULL), '{}') AS officers
           FROM beats b ORDER BY b.code"""
    )
    return {"beats": [dict(r) for r in rows]}


@router.post("/assignments", status_code=201)
async def assign(body: NewAssignment, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    table = "grids" if body.role == AssignmentRole.grid_worker else "beats"
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(f"SELECT 1 FROM {table} WHERE code = $1", body.area):
            what = "grid" if table == "grids" else "beat"
            reason = f"unknown {what} {body.area} (a {body.role.value} is assigned to a {what})"
            raise unprocessable("body.area", reason)
        assignment_id = derived_id("assignment", body.person, body.role.value, body.area, now.isoformat())
        try:
            await conn.execute(
                "INSERT INTO assignments (id, person, role, area, since, assigned_by) VALUES ($1, $2, $3, $4, $5, $6)",
                assignment_id,
                body.person,
                body.role.value,
                body.area,
                now,
                caller.sub,
            )
        except asyncpg.UniqueViolationError:
            raise Problem(
                409, f"{body.person} is already assigned to {body.area} as {body.role.value}", type="duplicate"
            ) from None
        await _assignment_event(conn, assignment_id, body.person, body.role, body.area, "assigned", now)
    return {"assignment_id": assignment_id, "person": body.person, "role": body.role, "area": body.area, "since": now}


@router.post("/assignments/{assignment_id}/end")
async def end_assignment(assignment_id: str, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE assignments SET until = $2 WHERE id = $1 AND until IS NULL RETURNING person, role, area",
            assignment_id,
            now,
        )
        if row is None:
            raise Problem(404, f"no open assignment {assignment_id}")
        role = AssignmentRole(row["role"])
        await _assignment_event(conn, assignment_id, row["person"], role, row["area"], "ended", now)
    return {"assignment_id": assignment_id, "until": now}


async def _assignment_event(conn, assignment_id, person, role, area, change: Literal["assigned", "ended"], now):
    data = AssignmentChanged(assignment_id=assignment_id, person=person, role=role, area=area, change=change, at=now)
    await emit(conn, data, id=derived_id("assignment", assignment_id, change), key=area, time=now)
