"""Registry endpoints at the door: set-up and reads forwarded to the registry (which owns the data and filters to
scope); arrivals, departures and moves submitted through INTAKE with ID numbers and phones protected first."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from urllib.parse import quote, unquote, urlencode

import httpx
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.background import BackgroundTask

from jinshui.contracts import registry as contracts
from jinshui.contracts.base import MAX_BATCH, HouseholdCode
from jinshui.gateway import household_card
from jinshui.gateway.api import accept_submission
from jinshui.gateway.proxy import forward
from jinshui.gateway.rbac import allowed
from jinshui.kit import telemetry
from jinshui.kit.app import IDENTITY_NAME, IDENTITY_ROLE, IDENTITY_SUB, ServiceDep
from jinshui.kit.pii import IdNumber, Keyring, Phone
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")
PurposeHeader = Annotated[
    str | None,
    Header(
        alias="X-Purpose",
        description="police only: why the personal data is needed whole (audited); UTF-8, percent-encoded",
    ),
]


async def _to_registry(request: Request, svc, caller: Identity, path: str):
    return await forward(request, svc, caller, svc.settings.registry_url, path)


async def _read_personal(request: Request, svc, caller: Identity, path: str, purpose: str | None):
    """A read that may show personal data: the purpose travels only from the X-Purpose header."""
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "purpose"]
    if purpose:
        query.append(("purpose", unquote(purpose)))
    request = Request({**request.scope, "query_string": urlencode(query).encode()}, request.receive)
    return await forward(request, svc, caller, svc.settings.registry_url, path)


# --- set-up: grids, beats, coverage, assignments (community admins) ----------------------------------------
@router.post("/grids", status_code=201)
async def define_grid(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/grids")]):
    return await _to_registry(request, svc, caller, "/v1/grids")


@router.get("/grids")
async def grids(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/grids")]):
    return await _to_registry(request, svc, caller, "/v1/grids")


@router.post("/beats", status_code=201)
async def define_beat(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/beats")]):
    return await _to_registry(request, svc, caller, "/v1/beats")


@router.get("/beats")
async def beats(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/beats")]):
    return await _to_registry(request, svc, caller, "/v1/beats")


@router.put("/beats/{code}/grids")
async def set_coverage(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("PUT", "/v1/beats/{code}/grids")],
):
    return await _to_registry(request, svc, caller, f"/v1/beats/{quote(code, safe='')}/grids")


@router.post("/assignments", status_code=201)
async def assign(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/assignments")]):
    return await _to_registry(request, svc, caller, "/v1/assignments")


@router.post("/assignments/{assignment_id}/end")
async def end_assignment(
    assignment_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/assignments/{assignment_id}/end")],
):
    return await _to_registry(request, svc, caller, f"/v1/assignments/{quote(assignment_id, safe='')}/end")


# --- households, persons, audit -------------------------------------------------------------------------------
@router.post("/households", status_code=201)
async def register_household(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/households")]
):
    return await _to_registry(request, svc, caller, "/v1/households")


@router.get("/households/{code}", responses={200: {"model": household_card.HouseholdCard}})
async def household(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/households/{code}")],
    purpose: PurposeHeader = None,
):
    card = await _read_personal(request, svc, caller, f"/v1/households/{quote(code, safe='')}", purpose)
    return await household_card.compose(svc, caller, card)


@router.get("/households/{code}/qr")
async def household_qr(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/households/{code}/qr")],
    format: Literal["svg", "png"] = "svg",
):
    return await _to_registry(request, svc, caller, f"/v1/households/{quote(code, safe='')}/qr")


@router.get("/households/{code}/history")
async def household_history(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/households/{code}/history")],
):
    return await _to_registry(request, svc, caller, f"/v1/households/{quote(code, safe='')}/history")


@router.post("/persons/search")
async def search_persons(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/persons/search")]
):
    return await _to_registry(request, svc, caller, "/v1/persons/search")


@router.get("/persons/{person_id}")
async def person(
    person_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/persons/{person_id}")],
    purpose: PurposeHeader = None,
):
    return await _read_personal(request, svc, caller, f"/v1/persons/{quote(person_id, safe='')}", purpose)


@router.get("/audit")
async def audit(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/audit")]):
    return await _to_registry(request, svc, caller, "/v1/audit")


# --- residencies: submitted; personal data protected before anything is published ---------------------------
class DoorModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PersonIn(DoorModel):
    name: str = Field(min_length=1, max_length=64)
    id_number: IdNumber
    phone: Phone | None = None
    birth_date: date | None = Field(default=None, description="default: as the ID number gives it")
    sex: Literal["female", "male"] | None = Field(default=None, description="default: as the ID number gives it")


class ArrivalIn(DoorModel):
    household_code: HouseholdCode
    person: PersonIn
    kind: contracts.ResidencyKind
    arrived_at: datetime
    expected_end: datetime | None = None


class PersonRefIn(DoorModel):
    person_id: str | None = Field(default=None, max_length=64)
    id_number: IdNumber | None = None

    @model_validator(mode="after")
    def _one(self) -> PersonRefIn:
        if (self.person_id is None) == (self.id_number is None):
            raise ValueError("give either person_id or id_number")
        return self


class DepartureIn(DoorModel):
    household_code: HouseholdCode
    person: PersonRefIn
    departed_at: datetime
    reason: str = Field(default="", max_length=500)


class MoveIn(DoorModel):
    from_household: HouseholdCode
    to_household: HouseholdCode
    person: PersonRefIn
    moved_at: datetime
    kind: contracts.ResidencyKind | None = None
    expected_end: datetime | None = None


class Arrivals(DoorModel):
    arrivals: list[ArrivalIn] = Field(min_length=1, max_length=MAX_BATCH)


class Departures(DoorModel):
    departures: list[DepartureIn] = Field(min_length=1, max_length=MAX_BATCH)


class Moves(DoorModel):
    moves: list[MoveIn] = Field(min_length=1, max_length=MAX_BATCH)


def _protected(keyring: Keyring, kind: Literal["id_number", "phone"], value: str) -> contracts.ProtectedValue:
    return contracts.ProtectedValue(**keyring.protect(kind, value).model_dump())


def _person(keyring: Keyring, p: PersonIn) -> contracts.PersonData:
    born = date(int(p.id_number[6:10]), int(p.id_number[10:12]), int(p.id_number[12:14]))
    return contracts.PersonData(
        name=p.name.strip(),
        id_number=_protected(keyring, "id_number", p.id_number),
        phone=_protected(keyring, "phone", p.phone) if p.phone else None,
        birth_date=p.birth_date or born,
        sex=p.sex or ("male" if int(p.id_number[16]) % 2 else "female"),
    )


def _ref(keyring: Keyring, r: PersonRefIn) -> contracts.PersonRef:
    if r.id_number is not None:
        return contracts.PersonRef(id_number=_protected(keyring, "id_number", r.id_number))
    return contracts.PersonRef(person_id=r.person_id)


async def _submit(request, svc, caller: Identity, prefer: str | None, *, kind: str, model, records):
    """Protect the batch's personal data, then submit it as one INTAKE message (202, or the outcome if waited)."""
    event_type = contracts.TYPES_BY_MODEL[model]
    return await accept_submission(
        request,
        svc,
        caller,
        prefer,
        kind=kind,
        event_type=event_type,
        subject=event_type.removeprefix("org.jinshui.").rsplit(".v", 1)[0],  # intake.<entity>.submitted
        make=lambda keyring, **head: model(**head, records=records(keyring)),
    )


Prefer = Annotated[str | None, Header()]


@router.post("/residents/arrivals", status_code=202)
async def arrivals(
    batch: Arrivals,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/residents/arrivals")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.ArrivalRecord(**a.model_dump(exclude={"person"}), person=_person(keyring, a.person))
            for a in batch.arrivals
        ]

    return await _submit(
        request, svc, caller, prefer, kind="arrivals", model=contracts.ArrivalsSubmitted, records=records
    )


@router.post("/residents/departures", status_code=202)
async def departures(
    batch: Departures,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/residents/departures")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.DepartureRecord(**d.model_dump(exclude={"person"}), person=_ref(keyring, d.person))
            for d in batch.departures
        ]

    return await _submit(
        request, svc, caller, prefer, kind="departures", model=contracts.DeparturesSubmitted, records=records
    )


@router.post("/residents/moves", status_code=202)
async def moves(
    batch: Moves,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/residents/moves")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.MoveRecord(**m.model_dump(exclude={"person"}), person=_ref(keyring, m.person))
            for m in batch.moves
        ]

    return await _submit(request, svc, caller, prefer, kind="moves", model=contracts.MovesSubmitted, records=records)


class LettingIn(DoorModel):
    household_code: HouseholdCode
    landlord: str = Field(min_length=1, max_length=64)
    tenants: list[PersonRefIn] = Field(min_length=1, max_length=20)
    starts_on: date
    expected_end: date | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> LettingIn:
        if self.expected_end is not None and self.expected_end <= self.starts_on:
            raise ValueError("the letting ends before it starts (expected_end is not after starts_on)")
        return self


class Lettings(DoorModel):
    lettings: list[LettingIn] = Field(min_length=1, max_length=MAX_BATCH)


class StopLetting(DoorModel):
    stopped_on: date
    reason: str = Field(default="", max_length=500)


@router.post("/lettings", status_code=202)
async def lettings(
    batch: Lettings,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/lettings")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.LettingRecord(
                **item.model_dump(exclude={"tenants"}), tenants=[_ref(keyring, t) for t in item.tenants]
            )
            for item in batch.lettings
        ]

    return await _submit(
        request, svc, caller, prefer, kind="lettings", model=contracts.LettingsSubmitted, records=records
    )


@router.post("/lettings/{letting_id}/stop", status_code=202)
async def stop_letting(
    letting_id: str,
    body: StopLetting,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/lettings/{letting_id}/stop")],
    prefer: Prefer = None,
):
    def records(_keyring: Keyring):
        return [contracts.LettingStop(letting_id=letting_id, **body.model_dump())]

    return await _submit(
        request, svc, caller, prefer, kind="letting_stops", model=contracts.LettingStopsSubmitted, records=records
    )


# --- floating residencies: renewed (a new expected end) -------------------------------------------------------
class RenewalIn(DoorModel):
    household_code: HouseholdCode
    person: PersonRefIn
    expected_end: datetime


class Renewals(DoorModel):
    renewals: list[RenewalIn] = Field(min_length=1, max_length=MAX_BATCH)


@router.post("/residents/renewals", status_code=202)
async def renewals(
    batch: Renewals,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/residents/renewals")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.RenewalRecord(**r.model_dump(exclude={"person"}), person=_ref(keyring, r.person))
            for r in batch.renewals
        ]

    return await _submit(
        request, svc, caller, prefer, kind="renewals", model=contracts.RenewalsSubmitted, records=records
    )


# --- tags (标签化管理): set and ended in the field, submitted; the kinds are set up by community admins -------
class TagIn(DoorModel):
    tag: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
    person: PersonRefIn | None = None
    household_code: HouseholdCode | None = None
    since: date
    until: date | None = None
    reason: str = Field(min_length=1, max_length=500, description="why the tag is set")

    @model_validator(mode="after")
    def _checked(self) -> TagIn:
        if (self.person is None) == (self.household_code is None):
            raise ValueError("give either person or household_code")
        if self.until is not None and self.until < self.since:
            raise ValueError("until is before since")
        return self


class Tags(DoorModel):
    tags: list[TagIn] = Field(min_length=1, max_length=MAX_BATCH)


class TagEndIn(DoorModel):
    tag_id: str = Field(min_length=1, max_length=64)
    ended_on: date
    reason: str = Field(min_length=1, max_length=500)


class TagEnds(DoorModel):
    tags: list[TagEndIn] = Field(min_length=1, max_length=MAX_BATCH)


@router.post("/tags", status_code=202)
async def set_tags(
    batch: Tags,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/tags")],
    prefer: Prefer = None,
):
    def records(keyring: Keyring):
        return [
            contracts.TagRecord(
                **t.model_dump(exclude={"person"}), person=_ref(keyring, t.person) if t.person else None
            )
            for t in batch.tags
        ]

    return await _submit(request, svc, caller, prefer, kind="tags", model=contracts.TagsSubmitted, records=records)


@router.post("/tags/end", status_code=202)
async def end_tags(
    batch: TagEnds,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/tags/end")],
    prefer: Prefer = None,
):
    def records(_keyring: Keyring):
        return [contracts.TagEnd(**t.model_dump()) for t in batch.tags]

    return await _submit(
        request, svc, caller, prefer, kind="tag_ends", model=contracts.TagEndsSubmitted, records=records
    )


@router.get("/tag-kinds")
async def tag_kinds(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/tag-kinds")]):
    return await _to_registry(request, svc, caller, "/v1/tag-kinds")


@router.post("/tag-kinds", status_code=201)
async def define_tag_kind(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/tag-kinds")]
):
    return await _to_registry(request, svc, caller, "/v1/tag-kinds")


# --- visit coverage ----------------------------------------------------------------------------------------------
@router.get("/grids/{code}/coverage")
async def grid_coverage(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/grids/{code}/coverage")],
):
    return await _to_registry(request, svc, caller, f"/v1/grids/{quote(code, safe='')}/coverage")


@router.get("/my/households-due")
async def my_households_due(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/my/households-due")]
):
    return await _to_registry(request, svc, caller, "/v1/my/households-due")


# --- bulk import: the CSV streamed on to the registry (it holds the keys), its NDJSON report streamed back ------
@router.post(
    "/imports",
    summary="Bulk import of households, persons and residencies from CSV (UTF-8 or GBK)",
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
    responses={
        200: {
            "description": "A summary line, then one line per rejected row (row, column, reason), as NDJSON",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def bulk_import(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/imports")]
) -> StreamingResponse:
    headers = telemetry.inject({IDENTITY_SUB: caller.sub, IDENTITY_ROLE: caller.role, IDENTITY_NAME: caller.name})
    client: httpx.AsyncClient = svc.app.state.http
    upstream_request = client.build_request(
        "POST",
        svc.settings.registry_url.rstrip("/") + "/v1/imports",
        params=request.query_params,
        content=request.stream(),
        headers={**headers, "content-type": request.headers.get("content-type", "text/csv")},
        timeout=httpx.Timeout(3600, connect=5),
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as e:
        raise Problem(503, f"the registry did not answer: {e!r}", headers={"Retry-After": "1"}) from e
    media = upstream.headers.get("content-type", "application/json")
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        media_type=media,
        background=BackgroundTask(upstream.aclose),
    )
