"""Registry HTTP API (behind the gateway): households and their card, QR codes, history, persons, audit."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Annotated, Literal

import asyncpg
import orjson
import segno
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jinshui.contracts.events import AreaCode, HouseholdCode, HouseholdRegistered
from jinshui.contracts.registry import HouseUse
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.pii import Keyring, PersonalDataError
from jinshui.kit.problems import Problem
from jinshui.registry import codes, disclosure, imports, scope, tags, views
from jinshui.registry.areas import unprocessable
from jinshui.registry.outbox import derived_id, emit, history

router = APIRouter(prefix="/v1")


def unit_view(u, *, keyring: Keyring) -> dict:
    """A unit as it is shown: the operator's ID number and phone masked."""
    operator = None
    if u["operator_name"] or u["operator_id_number"] or u["operator_phone"]:
        operator = {
            "name": u["operator_name"],
            "id_number": disclosure.shown(u["operator_id_number"], whole=False, keyring=keyring),
            "phone": disclosure.shown(u["operator_phone"], whole=False, keyring=keyring),
        }
    return {
        "unit_id": u["id"],
        "name": u["name"],
        "category": u["category"],
        "licence_number": u["licence_number"],
        "household_code": u["household_code"],
        "house_id": u["house_id"],
        "address": u["address"],
        "grid": u["grid"],
        "beat": u["beat"],
        "operator": operator,
        "registered_at": u["registered_at"],
        "registered_by": u["registered_by"],
    }


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


async def new_household(conn, body: RegisterHousehold, *, code: str, actor: str, now: datetime) -> Household:
    """Register a household (and its house, when the address is new) with its event and first version."""
    beat = await _grid_and_beat(conn, body)
    address = body.address.strip()
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
        actor,
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
        actor=actor,
        at=now,
        data=data.model_dump(mode="json"),
    )
    return Household(code=code, address=address, grid=body.grid, beat=beat, house_id=house_id)


@router.post("/households", status_code=201, response_model=Household)
async def register_household(body: RegisterHousehold, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    for attempt in range(5):
        code = body.code or codes.new_code()
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await new_household(conn, body, code=code, actor=caller.sub, now=now)
        except asyncpg.UniqueViolationError as e:
            if body.code or attempt == 4:
                raise Problem(409, f"household code {code} is already registered", type="duplicate") from e
    raise AssertionError("unreachable")


async def _find_household(conn, code: str, caller=None) -> asyncpg.Record:
    row = await views.household(conn, code)
    if row is None and codes.normalize(code) != code:
        row = await views.household(conn, codes.normalize(code))
    if row is not None and caller is not None:
        if not (await scope.of(conn, caller)).covers(grid=row["grid"], beat=row["beat"]):
            raise Problem(404, f"no household {code} in your grids or beat")
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
        row = await _find_household(conn, code, caller)
        residents = await views.residents(conn, row["code"])
        visits = await views.last_visits(conn, row["code"])
        lettings = await views.lettings(conn, row["code"])
        units = await views.units(conn, house_id=row["house_id"], household_code=row["code"])
        tagged = await tags.of_household(conn, row["code"], sensitive=tags.sees_sensitive(caller))
    by_person: dict[str, list] = {}
    for t in tagged:
        by_person.setdefault(t.pop("person_id") or "", []).append(t)
    if residents:  # every read of a person's file is audited, masked or whole
        await disclosure.audit_read(
            svc,
            caller=caller,
            purpose=purpose or "",
            person_ids=[r["person_id"] for r in residents],
            fields=disclosure.fields_shown(whole=whole),
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
                "expired_at": r["expired_at"],
                "tags": by_person.get(r["person_id"], []),
            }
            for r in residents
        ],
        "tags": by_person.get("", []),
        "lettings": lettings,
        "units": [unit_view(u, keyring=keyring) for u in units],
        "visits": visits,
        "merged_into": row["merged_into"],
        "personal_data": "whole" if whole else "masked",
    }


@router.get("/households/{code}/qr")
async def household_qr(code: str, pool: PoolDep, caller: CallerDep, format: Literal["svg", "png"] = "svg"):
    async with pool.acquire() as conn:
        row = await _find_household(conn, code, caller)
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
        row = await _find_household(conn, code, caller)
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
async def search_persons(body: PersonSearch, pool: PoolDep, caller: CallerDep, svc: ServiceDep, keyring: KeyringDep):
    try:
        id_hash = keyring.lookup_hash("id_number", body.id_number) if body.id_number else None
        phone_hash = keyring.lookup_hash("phone", body.phone) if body.phone else None
    except PersonalDataError as e:
        raise unprocessable(f"body.{e.field}", e.reason) from None
    async with pool.acquire() as conn:
        rows = await views.search_persons(
            conn,
            name_prefix=body.name_prefix,
            id_hash=id_hash,
            phone_hash=phone_hash,
            address=body.address,
            limit=body.limit,
            scope=await scope.of(conn, caller),
        )
    if rows:
        await disclosure.audit_read(
            svc,
            caller=caller,
            purpose="",
            person_ids=sorted({r["person_id"] for r in rows}),
            fields=disclosure.fields_shown(whole=False),
            resource="/v1/persons/search",
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
    async with pool.acquire() as conn:
        row, stays = await views.person(conn, person_id)
        seen = await scope.of(conn, caller)
        tagged = await tags.of_person(conn, person_id, sensitive=tags.sees_sensitive(caller))
    # A narrowed caller sees a person living in their scope now (or, once departed, last living there).
    where = [s for s in stays if s["departed_at"] is None] or stays[:1]
    visible = seen.everything or (where and seen.covers(grid=where[0]["grid"], beat=where[0]["beat"]))
    if row is None or not visible:
        raise Problem(404, f"no person {person_id}")
    await disclosure.audit_read(  # every read of a person's file is audited, masked or whole
        svc,
        caller=caller,
        purpose=purpose or "",
        person_ids=[person_id],
        fields=disclosure.fields_shown(whole=whole),
        resource=f"/v1/persons/{person_id}",
    )
    return {
        "person_id": person_id,
        "name": row["name"],
        "id_number": disclosure.shown(row["id_number"], whole=whole, keyring=keyring),
        "phone": disclosure.shown(row["phone"], whole=whole, keyring=keyring),
        "birth_date": row["birth_date"],
        "sex": row["sex"],
        "died_on": row["died_on"],
        "merged_into": row["merged_into"],
        "residencies": [dict(s) for s in stays],
        "tags": tagged,
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


# --- tag kinds: the six of the practice, and others a community configures --------------------------------
class NewTagKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
    label: str = Field(min_length=1, max_length=100)
    sensitive: bool = False


@router.get("/tag-kinds")
async def tag_kinds(pool: PoolDep, caller: CallerDep):
    async with pool.acquire() as conn:
        return {"tag_kinds": await tags.kinds(conn)}


@router.post("/tag-kinds", status_code=201)
async def define_tag_kind(body: NewTagKind, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    try:
        await pool.execute(
            "INSERT INTO tag_kinds (code, label, sensitive, defined_at, defined_by) VALUES ($1, $2, $3, $4, $5)",
            body.code,
            body.label,
            body.sensitive,
            svc.clock.now(),
            caller.sub,
        )
    except asyncpg.UniqueViolationError:
        raise Problem(409, f"tag kind {body.code} is already defined", type="duplicate") from None
    return body.model_dump()


# --- visit coverage: households visited this month out of all (months in Asia/Shanghai) ---------------------
Month = Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM; default: this month")]


def _month(month: str | None, now: datetime) -> tuple[str, datetime, datetime]:
    """The month's label and its bounds in UTC (the month is Asia/Shanghai's)."""
    local = now.astimezone(tags.SHANGHAI)
    year, mon = (int(month[:4]), int(month[5:])) if month else (local.year, local.month)
    start = datetime(year, mon, 1, tzinfo=tags.SHANGHAI)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=tags.SHANGHAI)
    return f"{year:04d}-{mon:02d}", start.astimezone(UTC), end.astimezone(UTC)


@router.get("/grids/{code}/coverage")
async def grid_coverage(code: str, pool: PoolDep, caller: CallerDep, svc: ServiceDep, month: Month = None):
    label, start, end = _month(month, svc.clock.now())
    async with pool.acquire() as conn:
        beat = await conn.fetchrow(
            "SELECT c.beat FROM grids g LEFT JOIN coverage c ON c.grid = g.code WHERE g.code = $1", code
        )
        if beat is None or not (await scope.of(conn, caller)).covers(grid=code, beat=beat["beat"] or ""):
            raise Problem(404, f"no grid {code} in your scope")
        rows = await views.coverage(conn, grids=[code], start=start, end=end)
    return _coverage(label, rows, grid=code)


@router.get("/my/households-due")
async def my_households_due(pool: PoolDep, caller: CallerDep, svc: ServiceDep, month: Month = None):
    """A grid worker's households of their grids not yet visited this month."""
    label, start, end = _month(month, svc.clock.now())
    async with pool.acquire() as conn:
        grids = [
            r["area"]
            for r in await conn.fetch(
                """SELECT area FROM assignments WHERE person = $1 AND role = 'grid_worker' AND until IS NULL
                   ORDER BY area""",
                caller.sub,
            )
        ]
        rows = await views.coverage(conn, grids=grids, start=start, end=end)
    out = _coverage(label, rows, grids=grids)
    return {"grid_worker": caller.sub, **out, "due": out.pop("not_visited")}


def _coverage(label: str, rows, **where) -> dict:
    visited = sum(1 for r in rows if r["visited"])
    return {
        **where,
        "month": label,
        "households": len(rows),
        "visited": visited,
        "coverage": round(visited / len(rows), 4) if rows else None,
        "not_visited": [
            {"code": r["code"], "address": r["address"], "grid": r["grid"], "last_visited_at": r["last_visited_at"]}
            for r in rows
            if not r["visited"]
        ],
    }


# --- bulk import (CSV, UTF-8 or GBK), streamed -------------------------------------------------------------
@router.post("/imports")
async def bulk_import(
    request: Request,
    pool: PoolDep,
    caller: CallerDep,
    svc: ServiceDep,
    keyring: KeyringDep,
    encoding: Literal["auto", "utf-8", "gbk"] = "auto",
):
    """NDJSON: the summary first, then one line per rejected row (row, column, reason)."""
    importer = imports.Importer(pool=pool, keyring=keyring, actor=caller.sub, now=svc.clock.now())
    try:
        summary = await importer.run(request.stream(), encoding)
    except imports.ImportError_ as e:
        raise Problem(422, str(e), type="validation-error") from None

    def lines():
        with summary.errors as errors:
            yield orjson.dumps(summary.as_dict()) + b"\n"
            errors.seek(0)
            yield from errors

    return StreamingResponse(lines(), media_type="application/x-ndjson")
