"""Registry HTTP API (behind the gateway): households and their card, QR codes, history, persons, audit."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import asyncpg
import segno
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jinshui.contracts.events import AreaCode, HouseholdCode, HouseholdRegistered
from jinshui.contracts.registry import HouseUse
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.pii import Keyring, PersonalDataError
from jinshui.kit.problems import Problem
from jinshui.registry import codes, disclosure, views
from jinshui.registry.areas import unprocessable
from jinshui.registry.outbox import derived_id, emit, history

router = APIRouter(prefix="/v1")


def get_keyring(request: Request) -> Keyring:
    return request.app.state.keyring


KeyringDep = Annotated[Keyring, Depends(get_keyring)]
Purpose = Annotated[str | None, Query(description="why personal data is needed whole (the gateway's X-Purpose)")]


class RegisterHousehold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, max_length=200)
    grid: AreaCode
    beat: AreaCode | None = Field(default=None, description="taken from the grid's coverage when the grid is known")
    code: HouseholdCode | None = Field(default=None, description="an existing code; else one is made")
    building: str | None = Field(default=None, max_length=20)
    unit: str | None = Field(default=None, max_length=20)
    floor: str | None = Field(default=None, max_length=20)
    room: str | None = Field(default=None, max_length=20)
    house_use: HouseUse | None = None


class Household(BaseModel):
    code: str
    address: str
    grid: str
    beat: str
    house_id: str | None = None


async def _grid_and_beat(conn: asyncpg.Connection, body: RegisterHousehold) -> str:
    """The beat for the household's grid; refuses an unknown grid, an uncovered one, or a contradicting beat."""
    row = await conn.fetchrow(
        "SELECT g.code, c.beat FROM grids g LEFT JOIN coverage c ON c.grid = g.code WHERE g.code = $1", body.grid
    )
    if row is None:
        # Until a community's grids are set up, households carry the grid and beat they are given.
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM grids)"):
            raise unprocessable("body.grid", f"unknown grid {body.grid}")
        if body.beat is None:
            raise unprocessable("body.beat", "required while no grids are set up")
        return body.beat
    if row["beat"] is None:
        raise unprocessable("body.grid", f"grid {body.grid} is not covered by a police beat yet")
    if body.beat is not None and body.beat != row["beat"]:
        raise unprocessable("body.beat", f"grid {body.grid} is covered by beat {row['beat']}, not {body.beat}")
    return row["beat"]


@router.post("/households", status_code=201, response_model=Household)
async def register_household(body: RegisterHousehold, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    address = body.address.strip()
    for attempt in range(5):
        code = body.code or codes.new_code()
        try:
            async with pool.acquire() as conn, conn.transaction():
                beat = await _grid_and_beat(conn, body)
                house_id = derived_id("house", address)
                await conn.execute(
                    """INSERT INTO houses (id, address, building, unit, floor, room, use, grid, registered_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (address) DO NOTHING""",
                    house_id,
                    address,
                    body.building,
                    body.unit,
                    body.floor,
                    body.room,
                    body.house_use.value if body.house_use else None,
                    body.grid,
                    now,
                )
                await conn.execute(
                    """INSERT INTO households (code, address, grid, beat, registered_at, registered_by, house_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    code,
                    address,
                    body.grid,
                    beat,
                    now,
                    caller.sub,
                    house_id,
                )
                data = HouseholdRegistered(
                    code=code,
                    address=address,
                    grid=body.grid,
                    beat=beat,
                    registered_at=now,
                    house_id=house_id,
                    house_use=body.house_use,
                )
                await emit(conn, data, id=derived_id("household.registered", code), key=code, time=now)
                await history(
                    conn,
                    household_code=code,
                    entity="household",
                    entity_id=code,
                    action="registered",
                    actor=caller.sub,
                    at=now,
                    data=data.model_dump(mode="json"),
                )
        except asyncpg.UniqueViolationError as e:
            if body.code or attempt == 4:
                raise Problem(409, f"household code {code} is already registered", type="duplicate") from e
            continue
        return Household(code=code, address=address, grid=body.grid, beat=beat, house_id=house_id)


async def _find_household(conn, code: str) -> asyncpg.Record:
    row = await views.household(conn, code)
    if row is None and codes.normalize(code) != code:
        row = await views.household(conn, codes.normalize(code))
    if row is None:
        typed = codes.normalize(code)
        if codes.looks_generated(typed) and not codes.is_valid(typed):
            raise Problem(404, f"no household {code}: its check character does not match, so it was mistyped")
        raise Problem(404, f"no household {code}")
    return row


@router.get("/households/{code}")
async def household_card(
    code: str, pool: PoolDep, caller: CallerDep, svc: ServiceDep, keyring: KeyringDep, purpose: Purpose = None
):
    whole = disclosure.wants_whole(caller, purpose)
    async with pool.acquire() as conn:
        row = await _find_household(conn, code)
        residents = await views.residents(conn, row["code"])
        visits = await views.last_visits(conn, row["code"])
        lettings = await views.lettings(conn, row["code"])
    if whole and residents:
        await disclosure.audit_read(
            svc,
            caller=caller,
            purpose=purpose or "",
            person_ids=[r["person_id"] for r in residents],
            fields=["id_number", "phone"],
            resource=f"/v1/households/{row['code']}",
        )
    return {
        "code": row["code"],
        "address": row["address"],
        "grid": row["grid"],
        "beat": row["beat"],
        "house": {
            "id": row["house_id"],
            "use": row["house_use"],
            **{k: row[k] for k in ("building", "unit", "floor", "room")},
        },
        "residents": [
            {
                "person_id": r["person_id"],
                "name": r["name"],
                "kind": r["kind"],
                "arrived_at": r["arrived_at"],
                "expected_end": r["expected_end"],
                "departure_check": r["departure_check"],
                "id_number": disclosure.shown(r["id_number"], whole=whole, keyring=keyring),
                "phone": disclosure.shown(r["phone"], whole=whole, keyring=keyring),
                "birth_date": r["birth_date"],
                "sex": r["sex"],
            }
            for r in residents
        ],
        "lettings": lettings,
        "visits": visits,
        "personal_data": "whole" if whole else "masked",
    }


@router.get("/households/{code}/qr")
async def household_qr(code: str, pool: PoolDep, caller: CallerDep, format: Literal["svg", "png"] = "svg"):
    row = await _find_household(pool, code)
    qr = segno.make(row["code"], error="m")
    out = io.BytesIO()
    if format == "png":
        qr.save(out, kind="png", scale=8, border=4)
        return Response(out.getvalue(), media_type="image/png")
    qr.save(out, kind="svg", scale=8, border=4, title=f"household {row['code']}")
    return Response(out.getvalue(), media_type="image/svg+xml")


@router.get("/households/{code}/history")
async def household_history(code: str, pool: PoolDep, caller: CallerDep):
    async with pool.acquire() as conn:
        row = await _find_household(conn, code)
        return {"code": row["code"], "versions": await views.history(conn, row["code"])}


class PersonSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_prefix: str | None = Field(default=None, min_length=1, max_length=64)
    id_number: str | None = Field(default=None, max_length=32)
    phone: str | None = Field(default=None, max_length=32)
    address: str | None = Field(default=None, min_length=1, max_length=200)
    limit: int = Field(default=50, ge=1, le=200)

    @model_validator(mode="after")
    def _something(self) -> PersonSearch:
        if not (self.name_prefix or self.id_number or self.phone or self.address):
            raise ValueError("give name_prefix, id_number, phone or address")
        return self


@router.post("/persons/search")
async def search_persons(body: PersonSearch, pool: PoolDep, caller: CallerDep, keyring: KeyringDep):
    try:
        id_hash = keyring.lookup_hash("id_number", body.id_number) if body.id_number else None
        phone_hash = keyring.lookup_hash("phone", body.phone) if body.phone else None
    except PersonalDataError as e:
        raise unprocessable(f"body.{e.field}", e.reason) from None
    rows = await views.search_persons(
        pool,
        name_prefix=body.name_prefix,
        id_hash=id_hash,
        phone_hash=phone_hash,
        address=body.address,
        limit=body.limit,
    )
    return {
        "persons": [
            {
                "person_id": r["person_id"],
                "name": r["name"],
                "id_number": disclosure.shown(r["id_number"], whole=False, keyring=keyring),
                "phone": disclosure.shown(r["phone"], whole=False, keyring=keyring),
                "household_code": r["household_code"],
                "address": r["address"],
                "kind": r["kind"],
            }
            for r in rows
        ]
    }


@router.get("/persons/{person_id}")
async def person(
    person_id: str, pool: PoolDep, caller: CallerDep, svc: ServiceDep, keyring: KeyringDep, purpose: Purpose = None
):
    whole = disclosure.wants_whole(caller, purpose)
    row, stays = await views.person(pool, person_id)
    if row is None:
        raise Problem(404, f"no person {person_id}")
    if whole:
        await disclosure.audit_read(
            svc,
            caller=caller,
            purpose=purpose or "",
            person_ids=[person_id],
            fields=["id_number", "phone"],
            resource=f"/v1/persons/{person_id}",
        )
    return {
        "person_id": person_id,
        "name": row["name"],
        "id_number": disclosure.shown(row["id_number"], whole=whole, keyring=keyring),
        "phone": disclosure.shown(row["phone"], whole=whole, keyring=keyring),
        "birth_date": row["birth_date"],
        "sex": row["sex"],
        "residencies": [dict(s) for s in stays],
        "personal_data": "whole" if whole else "masked",
    }


@router.get("/audit")
async def audit(
    pool: PoolDep,
    caller: CallerDep,
    person_id: str | None = None,
    reader: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    return {"reads": await views.audit(pool, person_id=person_id, reader=reader, limit=limit)}
