"""Incidents HTTP API (behind the gateway): reads, and the commands a person waits for."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts.incidents import (
    HazardCategory,
    IncidentStatus,
    InspectionResult,
    MediationMethod,
    MediationOutcome,
    ProtectedValue,
)
from jinshui.incidents import clocks, hazards, lifecycle, mentions, views
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


class RectificationDeadline(Body):
    deadline: datetime | None = None
    days: int | None = Field(default=None, ge=1, le=365)
    hazard_category: HazardCategory | None = None
    reason: Reason


class Inspection(Body):
    result: InspectionResult
    note: str = Field(default="", max_length=4000)
    inspected_at: datetime | None = None
    new_deadline: datetime | None = None
    new_deadline_days: int | None = Field(default=None, ge=1, le=365)


class Pause(Body):
    waiting_on: str = Field(min_length=1, max_length=200)
    reason: Reason


class Resume(Body):
    reason: Reason


class ExtensionAsked(Body):
    days: int = Field(ge=1, le=60)
    reason: Reason


class ExtensionDecision(Body):
    decision: Literal["approved", "refused"]
    reason: Reason


class FollowUp(Body):
    visited_at: datetime
    visited_by: str | None = Field(default=None, min_length=1, max_length=100)
    note: str = Field(default="", max_length=4000)
    still_settled: bool
    reopen: bool = False


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


async def _locked(conn, incident_id: str, pool, caller):
    await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
    return await lifecycle.locked_incident(conn, incident_id)


@router.post("/incidents/{incident_id}/rectification-deadline")
async def rectification_deadline(
    incident_id: str, body: RectificationDeadline, pool: PoolDep, caller: CallerDep, svc: ServiceDep
):
    if body.deadline is not None and body.days is not None:
        raise Problem(
            422, "give a deadline or days, not both", errors=[{"field": "body.days", "reason": "with deadline"}]
        )
    at, command_id = svc.clock.now(), _command_id()
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        row = await clocks.running(
            conn, row=row, why="a new rectification deadline", by=caller.sub, at=at, command_id=command_id
        )
        await hazards.set_deadline_by_hand(
            conn,
            row=row,
            deadline=body.deadline,
            days=body.days,
            hazard_category=body.hazard_category.value if body.hazard_category else None,
            reason=body.reason,
            caller=caller,
            at=at,
            command_id=command_id,
        )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/inspections", status_code=201)
async def inspect(incident_id: str, body: Inspection, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    if body.new_deadline is not None and body.new_deadline_days is not None:
        raise Problem(
            422,
            "give a new deadline or days, not both",
            errors=[{"field": "body.new_deadline_days", "reason": "with new_deadline"}],
        )
    at, command_id = svc.clock.now(), _command_id()
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        row = await clocks.running(conn, row=row, why="a re-inspection", by=caller.sub, at=at, command_id=command_id)
        return await hazards.inspect(
            conn,
            row=row,
            result=body.result,
            note=body.note,
            inspected_at=body.inspected_at or at,
            new_deadline=body.new_deadline,
            new_deadline_days=body.new_deadline_days,
            caller=caller,
            at=at,
            command_id=command_id,
        )


@router.post("/incidents/{incident_id}/pause")
async def pause(incident_id: str, body: Pause, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        await clocks.pause(
            conn,
            row=row,
            waiting_on=body.waiting_on,
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/resume")
async def resume(incident_id: str, body: Resume, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        await clocks.resume(
            conn, row=row, reason=body.reason, by=caller.sub, at=svc.clock.now(), event_id=_command_id()
        )
    return await views.incident(pool, incident_id)


@router.post("/incidents/{incident_id}/extensions", status_code=201)
async def ask_extension(incident_id: str, body: ExtensionAsked, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        return await clocks.request_extension(
            conn,
            row=row,
            days=body.days,
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )


@router.post("/incidents/{incident_id}/extensions/{extension_id}/decision")
async def decide_extension(
    incident_id: str, extension_id: str, body: ExtensionDecision, pool: PoolDep, caller: CallerDep, svc: ServiceDep
):
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        return await clocks.decide_extension(
            conn,
            row=row,
            extension_id=extension_id,
            approve=body.decision == "approved",
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
            command_id=_command_id(),
        )


@router.post("/incidents/{incident_id}/follow-ups", status_code=201)
async def follow_up(incident_id: str, body: FollowUp, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    at = svc.clock.now()
    if body.visited_at > at + timedelta(minutes=5):
        raise Problem(
            422,
            "a follow-up visit is recorded once it took place",
            errors=[{"field": "body.visited_at", "reason": "in the future"}],
        )
    async with pool.acquire() as conn, conn.transaction():
        await get_incident(incident_id, pool, caller)  # 404 outside the caller's scope
        return await lifecycle.record_follow_up(
            conn,
            incident_id=incident_id,
            visited_by=body.visited_by or caller.sub,
            visited_at=body.visited_at,
            note=body.note,
            still_settled=body.still_settled,
            reopen=body.reopen,
            caller=caller,
            at=at,
            command_id=_command_id(),
        )


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


class PersonLink(Body):
    id_number: ProtectedValue  # sealed at the gateway: the clear number never comes here
    reason: Reason


@router.get("/mentions/unresolved")
async def unresolved_mentions(
    pool: PoolDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
):
    return await mentions.unresolved(pool, scope=await scope.scope_of(pool, caller), limit=limit, cursor=cursor)


@router.post("/incidents/{incident_id}/sources/{source_id}/persons/{index}/link")
async def link_person(
    incident_id: str, source_id: str, index: int, body: PersonLink, pool: PoolDep, caller: CallerDep, svc: ServiceDep
):
    if body.id_number.kind != "id_number":
        raise Problem(422, "a person is linked by ID number", errors=[{"field": "body.id_number", "reason": "kind"}])
    async with pool.acquire() as conn, conn.transaction():
        row = await _locked(conn, incident_id, pool, caller)
        return await mentions.link(
            conn,
            incident=row,
            source_id=source_id,
            index=index,
            id_number=body.id_number,
            reason=body.reason,
            caller=caller,
            at=svc.clock.now(),
        )
