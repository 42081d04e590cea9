"""Registry HTTP API (behind the gateway)."""

from __future__ import annotations

import secrets

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, Field

from jinshui.contracts import streams
from jinshui.contracts.envelope import new_event
from jinshui.contracts.events import AreaCode, HouseholdCode, HouseholdRegistered
from jinshui.kit import outbox
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.problems import Problem
from jinshui.registry.handlers import SOURCE, derived_id

router = APIRouter(prefix="/v1")
# No 0/O or 1/I: codes are read aloud and typed from paper.
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"


class RegisterHousehold(BaseModel):
    address: str = Field(min_length=1, max_length=200)
    grid: AreaCode
    beat: AreaCode
    code: HouseholdCode | None = None


class Household(BaseModel):
    code: str
    address: str
    grid: str
    beat: str


def new_code() -> str:
    return "JS" + "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))


@router.post("/households", status_code=201, response_model=Household)
async def register_household(body: RegisterHousehold, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    code = body.code or new_code()
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO households (code, address, grid, beat, registered_at, registered_by)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                code,
                body.address,
                body.grid,
                body.beat,
                now,
                caller.sub,
            )
        except asyncpg.UniqueViolationError as e:
            raise Problem(409, f"household code {code} is already registered", type="duplicate") from e
        event = new_event(
            id=derived_id("household.registered", code),
            type="org.jinshui.registry.household.registered.v1",
            source=SOURCE,
            subject=code,
            time=now,
            data=HouseholdRegistered(
                code=code, address=body.address, grid=body.grid, beat=body.beat, registered_at=now
            ),
        )
        await outbox.add(conn, event=event, subject=streams.keyed(streams.REGISTRY_HOUSEHOLD_REGISTERED, code))
    return Household(code=code, address=body.address, grid=body.grid, beat=body.beat)


@router.get("/households/{code}", response_model=Household)
async def household_card(code: str, pool: PoolDep, caller: CallerDep):
    row = await pool.fetchrow("SELECT code, address, grid, beat FROM households WHERE code = $1", code)
    if row is None:
        raise Problem(404, f"no household {code}")
    return Household(**dict(row))
