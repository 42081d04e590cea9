"""Registry endpoints at the door for units (实有单位) and for keeping the file right: corrections and voids,
deaths, person merges, household splits and merges. Synchronous (a person waits for each), forwarded to the
registry once the body is valid; the registry checks authorship and scope."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jinshui.contracts import registry as contracts
from jinshui.contracts.base import AreaCode, HouseholdCode
from jinshui.gateway.proxy import forward
from jinshui.gateway.rbac import allowed
from jinshui.kit.app import ServiceDep
from jinshui.kit.pii import IdNumber, Phone
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


class DoorModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def _to_registry(request: Request, svc, caller: Identity, path: str, body: BaseModel | None = None):
    data = orjson.dumps(body.model_dump(mode="json", exclude_unset=True)) if body is not None else None
    return await forward(request, svc, caller, svc.settings.registry_url, path, body=data)


# --- units (实有单位) ------------------------------------------------------------------------------------------
class OperatorIn(DoorModel):
    name: str = Field(min_length=1, max_length=64)
    id_number: IdNumber | None = None
    phone: Phone | None = None


class UnitIn(DoorModel):
    name: str = Field(min_length=1, max_length=100)
    category: contracts.UnitCategory
    licence_number: str | None = Field(default=None, pattern=r"^[0-9A-Za-z][0-9A-Za-z-]{3,39}$")
    household_code: HouseholdCode | None = Field(default=None, description="the unit is at this household's house")
    address: str | None = Field(default=None, min_length=1, max_length=200, description="else: its own address")
    grid: AreaCode | None = Field(default=None, description="with address: the grid it is in")
    beat: AreaCode | None = None
    operator: OperatorIn | None = None

    @model_validator(mode="after")
    def _where(self) -> UnitIn:
        if (self.household_code is None) == (self.address is None):
            raise ValueError("give either household_code or address (with grid)")
        if self.address is not None and self.grid is None:
            raise ValueError("grid is required with address")
        return self


class OperatorOut(BaseModel):
    name: str | None = None
    id_number: str | None = Field(default=None, description="masked")
    phone: str | None = Field(default=None, description="masked")


class UnitOut(BaseModel):
    unit_id: str
    name: str
    category: contracts.UnitCategory
    licence_number: str | None = None
    household_code: str | None = None
    house_id: str
    address: str
    grid: str
    beat: str
    operator: OperatorOut | None = None
    registered_at: datetime
    registered_by: str


class UnitsOut(BaseModel):
    units: list[UnitOut]


@router.post("/units", status_code=201, response_model=UnitOut, summary="Register a unit (实有单位)")
async def register_unit(
    body: UnitIn, request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/units")]
):
    return await _to_registry(request, svc, caller, "/v1/units", body)


@router.get("/units", response_model=UnitsOut, summary="List units, at a household's address or in a grid")
async def units(
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/units")],
    household_code: Annotated[str | None, Query(max_length=32)] = None,
    grid: Annotated[str | None, Query(max_length=32)] = None,
):
    return await _to_registry(request, svc, caller, "/v1/units")


# --- corrections and voids -------------------------------------------------------------------------------------
class CorrectionIn(DoorModel):
    kind: Literal["visit", "residency", "letting", "tag", "unit", "person"]
    id: str = Field(min_length=1, max_length=64)
    changes: dict[str, Any] = Field(
        description="the fields to change and their right values: a visit's visited_at, concerns, people_present, "
        "follow_up_requested, note; a residency's kind, arrived_at, expected_end, departed_at; a letting's "
        "landlord, starts_on, expected_end; a tag's since, until, reason; a unit's name, category, licence_number, "
        "operator_name; a person's name, birth_date, sex, phone"
    )
    reason: str = Field(min_length=1, max_length=500)


class CorrectionOut(BaseModel):
    correction_id: str
    kind: str
    id: str
    before: dict[str, Any]
    after: dict[str, Any]
    reason: str


class VoidIn(DoorModel):
    kind: Literal["visit", "residency", "letting", "tag", "unit"]
    id: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500)


class VoidOut(BaseModel):
    void_id: str
    kind: str
    id: str
    reason: str
    voided_at: datetime


@router.post(
    "/corrections",
    response_model=CorrectionOut,
    summary="Correct a record entered by mistake",
    description="By its author or a community admin; the history keeps both versions.",
)
async def correct(
    body: CorrectionIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/corrections")],
):
    return await _to_registry(request, svc, caller, "/v1/corrections", body)


@router.post(
    "/voids",
    response_model=VoidOut,
    summary="Void a record entered by mistake",
    description="By its author or a community admin; the record stays in the history, marked void.",
)
async def void(
    body: VoidIn, request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/voids")]
):
    return await _to_registry(request, svc, caller, "/v1/voids", body)


# --- deaths and person merges ------------------------------------------------------------------------------------
class DeathIn(DoorModel):
    died_on: date
    reason: str = Field(min_length=1, max_length=500)


class DeathOut(BaseModel):
    person_id: str
    died_on: date
    residencies_closed: list[str]
    tags_ended: list[str]


class PersonMergeIn(DoorModel):
    keep: str = Field(min_length=1, max_length=64, description="the record that stays")
    merge: str = Field(min_length=1, max_length=64, description="the duplicate; it will point to keep")
    reason: str = Field(min_length=1, max_length=500)


class PersonMergeOut(BaseModel):
    merge_id: str
    kept: str
    merged: str
    residencies: list[str]
    tags: list[str]
    lettings: list[str]
    visits: list[str] = Field(description="visits that met the merged record, now the kept one")


@router.post(
    "/persons/{person_id}/death",
    response_model=DeathOut,
    summary="Record a death",
    description="Closes the person's open residencies (departures with reason death) and ends their tags.",
)
async def record_death(
    person_id: str,
    body: DeathIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/persons/{person_id}/death")],
):
    return await _to_registry(request, svc, caller, f"/v1/persons/{quote(person_id, safe='')}/death", body)


@router.post(
    "/persons/merge",
    response_model=PersonMergeOut,
    summary="Merge two person records found to be one",
    description="Residencies, tags, tenancies and visits' persons present move to the kept record; the merged "
    "one points to it.",
)
async def merge_persons(
    body: PersonMergeIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/persons/merge")],
):
    return await _to_registry(request, svc, caller, "/v1/persons/merge", body)


# --- households: split and merged ------------------------------------------------------------------------------
class SplitIn(DoorModel):
    persons: list[str] = Field(min_length=1, max_length=50, description="the members who set up the new household")
    address: str | None = Field(default=None, min_length=1, max_length=200, description="default: the same address")
    grid: AreaCode | None = Field(default=None, description="default: the same grid")
    building: str | None = Field(default=None, max_length=20)
    unit: str | None = Field(default=None, max_length=20)
    floor: str | None = Field(default=None, max_length=20)
    room: str | None = Field(default=None, max_length=20)
    house_use: contracts.HouseUse | None = None
    code: HouseholdCode | None = Field(default=None, description="the new household's code; else one is made")
    reason: str = Field(min_length=1, max_length=500)


class HouseholdOut(BaseModel):
    code: str
    address: str
    grid: str
    beat: str
    house_id: str | None = None


class SplitOut(BaseModel):
    split_id: str
    from_household: str
    household: HouseholdOut
    persons: list[str]


class HouseholdMergeIn(DoorModel):
    keep: HouseholdCode
    merge: HouseholdCode
    reason: str = Field(min_length=1, max_length=500)


class HouseholdMergeOut(BaseModel):
    merge_id: str
    kept: str
    merged: str
    persons: list[str]
    tags: list[str]
    lettings: list[str]


@router.post(
    "/households/{code}/split",
    status_code=201,
    response_model=SplitOut,
    summary="Split a household",
    description="Members set up their own household (a grown child): it is registered and their residencies move.",
)
async def split_household(
    code: str,
    body: SplitIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/households/{code}/split")],
):
    return await _to_registry(request, svc, caller, f"/v1/households/{quote(code, safe='')}/split", body)


@router.post(
    "/households/merge",
    response_model=HouseholdMergeOut,
    summary="Merge two household records found to be one",
    description="Residents, open tags, lettings and units move to the kept household; the merged one points to it.",
)
async def merge_households(
    body: HouseholdMergeIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/households/merge")],
):
    return await _to_registry(request, svc, caller, "/v1/households/merge", body)
