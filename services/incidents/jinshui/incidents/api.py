"""Incidents HTTP API (behind the gateway): reads, and the commands a person waits for."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts.incidents import IncidentStatus, MediationMethod, MediationOutcome
from jinshui.incidents import lifecycle, views
from jinshui.kit import scope
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.problems import Problem

router = APIRouter(prefix="/v1")
Reason = Annotated[str, Field(min_length=1, max_length=1000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Satisfaction(Body):
    satisfied: bool
    score: int | None = Field(default=None, ge=1, le=5)


class Transition(Body):
    to: IncidentStatus
    reason: Reason
    assignee: str | None = Field(default=None, max_length=100)
    satisfaction: Satisfaction | None = None


class Mediation(Body):
    mediators: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(min_length=1, max_length=10)
    method: MediationMethod
    held_at: datetime
    outcome: MediationOutcome
    agreement: str | None = Field(default=None, max_length=4000)
    notes: str = Field(default="", max_length=4000)


class Link(Body):
    source_id: str = Field(min_length=1, max_length=100)
    reason: Reason


class Unlink(Body):
    reason: Reason


def _command_id() -> str:
    return str(uuid.uuid4())


@router.get("/incidents")
async def list_incidents(
    pool: PoolDep,
    caller: CallerDep,
    status: Annotated[list[IncidentStatus] | None, Query()] = None,
    category: str | None = None,
    kind: str | None = None,
    grid: str | None = None,
    beat: str | None = None,
    household_code: str | None = None,
    opened_from: Annotated[datetime | None, Query(alias="from")] = None,
    opened_to: Annotated[datetime | None, Query(alias="to")] = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
):
    return await views.list_incidents(
        pool,
        status=[s.value for s in status] if status else None,
        category=category,
        kind=kind,
        grid=grid,
        beat=beat,
        household_code=household_code,
        opened_from=opened_from,
        opened_to=opened_to,
        overdue=overdue,
        limit=limit,
        cursor=cursor,
        scope=await scope.scope_of(pool, caller),
    )


@router.get("/incidents/{incident_id}")
async def get_incident(incident_id: str, pool: PoolDep, caller: CallerDep):
    found = await views.incident(pool, incident_id)
    if not scope.admits(await scope.scope_of(pool, caller), grid=found.get("grid"), beat=found.get("beat")):
        raise Problem(404, f"no incident {incident_id}")
    return found


@router.post("/incidents/{incident_id}/transitions")
async def move(incident_id: str, body: Transition, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    at = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await lifecycle.transition(
            conn,
            incident_id=incident_id,
            to=body.to,
            reason=body.reason,
            caller=caller,
            at=at,
            command_id=_command_id(),
            assignee=body.assignee,
        )
        if body.satisfaction is not None:
            await lifecycle.record_satisfaction(
                conn,
                incident_id=incident_id,
                satisfied=body.satisfaction.satisfied,
                score=body.satisfaction.score,
                caller=caller,
                at=at,
                command_id=_command_id(),
                row=row,
            )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/mediations", status_code=201)
async def mediate(incident_id: str, body: Mediation, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        return await lifecycle.record_mediation(
            conn,
            incident_id=incident_id,
            mediators=body.mediators,
            method=body.method,
            held_at=body.held_at,
            outcome=body.outcome,
            agreement=body.agreement,
            notes=body.notes,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )


@router.post("/incidents/{incident_id}/satisfaction")
async def satisfaction(incident_id: str, body: Satisfaction, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        await lifecycle.record_satisfaction(
            conn,
            incident_id=incident_id,
            satisfied=body.satisfied,
            score=body.score,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/sources")
async def link_source(incident_id: str, body: Link, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        await lifecycle.link(
            conn,
            incident_id=incident_id,
            source_id=body.source_id,
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/sources/{source_id}/unlink")
async def unlink_source(
    incident_id: str, source_id: str, body: Unlink, pool: PoolDep, caller: CallerDep, svc: ServiceDep
):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        new_id = await lifecycle.unlink(
            conn,
            incident_id=incident_id,
            source_id=source_id,
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )
    return {"incident": await views.incident(pool, incident_id), "new_incident_id": new_id}


@router.get("/sources/unresolved")
async def unresolved(pool: PoolDep, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=500)] = 100):
    return {"items": await views.unresolved_sources(pool, limit=limit)}


@router.get("/stats/incidents")
async def statistics(
    pool: PoolDep,
    caller: CallerDep,
    by: Literal["category", "kind", "grid", "beat", "month"] = "category",
    opened_from: Annotated[datetime | None, Query(alias="from")] = None,
    opened_to: Annotated[datetime | None, Query(alias="to")] = None,
):
    return await views.stats(pool, by=by, opened_from=opened_from, opened_to=opened_to)
