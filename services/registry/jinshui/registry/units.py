"""Units (实有单位): restaurants, internet cafés, market stalls, shops, at a house; registered synchronously, like
households. The operator's ID number and phone are protected like a person's (keyed hash, ciphertext, masked)."""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jinshui.contracts.base import AreaCode, HouseholdCode
from jinshui.contracts.registry import UnitCategory, UnitRegistered
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.pii import PersonalDataError
from jinshui.kit.problems import Problem
from jinshui.registry import scope, views
from jinshui.registry.api import KeyringDep, RegisterHousehold, _find_household, _grid_and_beat, unit_view
from jinshui.registry.areas import unprocessable
from jinshui.registry.outbox import derived_id, emit, history

router = APIRouter(prefix="/v1")
LICENCE = r"^[0-9A-Za-z][0-9A-Za-z-]{3,39}$"


class Operator(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    id_number: str | None = Field(default=None, max_length=32)
    phone: str | None = Field(default=None, max_length=32)


class NewUnit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    category: UnitCategory
    licence_number: str | None = Field(default=None, pattern=LICENCE, description="business licence number")
    household_code: HouseholdCode | None = Field(default=None, description="the unit is at this household's house")
    address: str | None = Field(default=None, min_length=1, max_length=200, description="else: its own address")
    grid: AreaCode | None = Field(default=None, description="with address: the grid it is in")
    beat: AreaCode | None = None
    operator: Operator | None = None

    @model_validator(mode="after")
    def _where(self) -> NewUnit:
        if (self.household_code is None) == (self.address is None):
            raise ValueError("give either household_code or address (with grid)")
        if self.address is not None and self.grid is None:
            raise ValueError("grid is required with address")
        return self


@router.post("/units", status_code=201)
async def register_unit(body: NewUnit, pool: PoolDep, caller: CallerDep, svc: ServiceDep, keyring: KeyringDep):
    now = svc.clock.now()
    op = body.operator
    try:
        id_number = (
            keyring.protect("id_number", op.id_number, field="body.operator.id_number") if op and op.id_number else None
        )
        phone = keyring.protect("phone", op.phone, field="body.operator.phone") if op and op.phone else None
    except PersonalDataError as e:
        raise unprocessable(e.field, e.reason) from None
    unit_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        if body.household_code is not None:
            household = await views.household(conn, body.household_code)
            if household is None:
                raise unprocessable("body.household_code", f"household {body.household_code} is not registered")
            if not (await scope.of(conn, caller)).covers(grid=household["grid"], beat=household["beat"]):
                raise unprocessable("body.household_code", f"household {body.household_code} is not in your scope")
            code, house_id, grid, beat = household["code"], household["house_id"], household["grid"], household["beat"]
        else:
            where = RegisterHousehold(address=body.address, grid=body.grid, beat=body.beat)
            beat = await _grid_and_beat(conn, where)
            address, grid = body.address.strip(), body.grid
            house_id = derived_id("house", address)
            await conn.execute(
                """INSERT INTO houses (id, address, use, grid, registered_at) VALUES ($1, $2, 'business', $3, $4)
                   ON CONFLICT (address) DO NOTHING""",
                house_id,
                address,
                grid,
                now,
            )
            code = await conn.fetchval(
                "SELECT code FROM households WHERE house_id = $1 AND merged_into IS NULL ORDER BY code LIMIT 1",
                house_id,
            )
        at_household = code if body.household_code is not None else None  # else only at the same address
        try:
            await conn.execute(
                """INSERT INTO units (id, name, category, licence_number, household_code, house_id, grid, beat,
                                      operator_name, operator_id_hash, operator_id_number, operator_phone_hash,
                                      operator_phone, registered_at, registered_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
                unit_id,
                body.name.strip(),
                body.category.value,
                body.licence_number,
                at_household,
                house_id,
                grid,
                beat,
                op.name.strip() if op else None,
                id_number.hash if id_number else None,
                id_number.model_dump() if id_number else None,
                phone.hash if phone else None,
                phone.model_dump() if phone else None,
                now,
                caller.sub,
            )
        except asyncpg.UniqueViolationError:
            raise Problem(
                409, f"a unit with licence {body.licence_number} is already registered", type="duplicate"
            ) from None
        data = UnitRegistered(
            unit_id=unit_id,
            name=body.name.strip(),
            category=body.category,
            licence_number=body.licence_number,
            household_code=at_household,
            house_id=house_id,
            grid=grid,
            beat=beat,
            operator_id_hash=id_number.hash if id_number else None,
            registered_at=now,
            registered_by=caller.sub,
        )
        await emit(conn, data, id=derived_id("unit.registered", unit_id), key=code or grid, time=now)
        if code is not None:
            await history(
                conn,
                household_code=code,
                entity="unit",
                entity_id=unit_id,
                action="registered",
                actor=caller.sub,
                at=now,
                data=data.model_dump(mode="json"),
            )
        row = await conn.fetchrow(
            "SELECT u.*, s.address FROM units u JOIN houses s ON s.id = u.house_id WHERE u.id = $1", unit_id
        )
    return unit_view(row, keyring=keyring)


@router.get("/units")
async def units(
    pool: PoolDep,
    caller: CallerDep,
    keyring: KeyringDep,
    household_code: Annotated[str | None, Query(max_length=32)] = None,
    grid: Annotated[str | None, Query(max_length=32)] = None,
):
    async with pool.acquire() as conn:
        seen = await scope.of(conn, caller)
        if household_code is not None:
            household = await _find_household(conn, household_code, caller)
            rows = await views.units(conn, house_id=household["house_id"], household_code=household["code"])
        elif grid is not None:
            if not seen.everything and grid not in seen.grids:
                raise Problem(404, f"no grid {grid} in your scope")
            rows = await views.units(conn, grids=[grid], beats=[])
        elif seen.everything:
            rows = await views.units(conn)
        else:
            rows = await views.units(conn, grids=seen.grids, beats=seen.beats)
    return {"units": [unit_view(u, keyring=keyring) for u in rows]}
