"""Risk endpoints at the door: alerts and their commands, gates, watch-lists (forwarded to risk), sightings
(submitted on the SIGHTINGS stream, person IDs turned into keyed hashes first)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jinshui.contracts import streams
from jinshui.contracts.base import MAX_BATCH, AreaCode
from jinshui.contracts.risk import AlertLevel, Plate, SightingRecord, SightingsSubmitted, WatchKind
from jinshui.gateway.api import accept_submission
from jinshui.gateway.proxy import forward
from jinshui.gateway.rbac import allowed
from jinshui.kit.app import ServiceDep
from jinshui.kit.pii import IdNumber, mask_id_number
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


async def _to_risk(request: Request, svc, caller: Identity, path: str, *, body: bytes | None = None):
    return await forward(request, svc, caller, svc.settings.risk_url, path, body=body)


@router.get("/alerts")
async def alerts(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/alerts")]):
    return await _to_risk(request, svc, caller, "/v1/alerts")


@router.get("/alerts/{alert_id}")
async def alert(
    alert_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/alerts/{alert_id}")],
):
    return await _to_risk(request, svc, caller, f"/v1/alerts/{alert_id}")


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=1000)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(
    alert_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/alerts/{alert_id}/acknowledge")],
    body: Reason | None = None,
):
    return await _to_risk(request, svc, caller, f"/v1/alerts/{alert_id}/acknowledge")


@router.post("/alerts/{alert_id}/resolve")
async def resolve(
    alert_id: str,
    body: Reason,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/alerts/{alert_id}/resolve")],
):
    return await _to_risk(request, svc, caller, f"/v1/alerts/{alert_id}/resolve")


@router.post("/alerts/{alert_id}/dismiss")
async def dismiss(
    alert_id: str,
    body: Reason,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/alerts/{alert_id}/dismiss")],
):
    return await _to_risk(request, svc, caller, f"/v1/alerts/{alert_id}/dismiss")


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: AreaCode
    name: str = Field(min_length=1, max_length=100)
    grid: AreaCode
    beat: AreaCode


@router.post("/gates", status_code=201)
async def add_gate(
    body: Gate, request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/gates")]
):
    return await _to_risk(request, svc, caller, "/v1/gates")


@router.get("/gates")
async def gates(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/gates")]):
    return await _to_risk(request, svc, caller, "/v1/gates")


class WatchEntryIn(BaseModel):
    """A plate, or a person by ID number (kept by risk only as a keyed hash and a mask)."""

    model_config = ConfigDict(extra="forbid")
    kind: WatchKind
    plate: Plate | None = None
    id_number: IdNumber | None = None
    level: AlertLevel
    reason: str = Field(min_length=1, max_length=500)
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _key_for_kind(self) -> WatchEntryIn:
        if self.kind == WatchKind.plate and (self.plate is None or self.id_number is not None):
            raise ValueError("a plate entry takes `plate` (and no id_number)")
        if self.kind == WatchKind.person and (self.id_number is None or self.plate is not None):
            raise ValueError("a person entry takes `id_number` (and no plate)")
        return self


@router.post("/watchlists", status_code=201)
async def add_watch_entry(
    body: WatchEntryIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/watchlists")],
):
    forwarded = body.model_dump(mode="json", exclude={"id_number"}, exclude_none=True)
    if body.id_number is not None:
        forwarded["person_hash"] = svc.app.state.keyring.lookup_hash("id_number", body.id_number)
        forwarded["masked"] = mask_id_number(body.id_number)
    return await _to_risk(request, svc, caller, "/v1/watchlists", body=orjson.dumps(forwarded))


@router.get("/watchlists")
async def watch_entries(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/watchlists")]
):
    return await _to_risk(request, svc, caller, "/v1/watchlists")


@router.delete("/watchlists/{entry_id}")
async def remove_watch_entry(
    entry_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("DELETE", "/v1/watchlists/{entry_id}")],
):
    return await _to_risk(request, svc, caller, f"/v1/watchlists/{entry_id}")


class SightingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: AreaCode
    seen_at: datetime
    plate: Plate | None = None
    id_number: IdNumber | None = None
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _something_seen(self) -> SightingIn:
        if self.plate is None and self.id_number is None:
            raise ValueError("a sighting needs a plate or an id_number")
        return self


class Sightings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sightings: list[SightingIn] = Field(min_length=1, max_length=MAX_BATCH)


@router.post("/sightings", status_code=202)
async def submit_sightings(
    batch: Sightings,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/sightings")],
    prefer: Annotated[str | None, Header()] = None,
):
    def make(*, keyring, **head) -> SightingsSubmitted:
        records = [
            SightingRecord(
                gate=s.gate,
                seen_at=s.seen_at,
                plate=s.plate,
                person_hash=keyring.lookup_hash("id_number", s.id_number) if s.id_number else None,
                confidence=s.confidence,
            )
            for s in batch.sightings
        ]
        return SightingsSubmitted(**head, records=records)

    return await accept_submission(
        request,
        svc,
        caller,
        prefer,
        kind="sightings",
        event_type="org.jinshui.sightings.batch.submitted.v1",
        subject=streams.SIGHTINGS_SUBMITTED,
        make=make,
    )


@router.get("/rules")
async def rules(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/rules")]):
    return await _to_risk(request, svc, caller, "/v1/rules")


@router.post("/rules/reload")
async def reload_rules(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/rules/reload")]
):
    return await _to_risk(request, svc, caller, "/v1/rules/reload")


@router.get("/tasks")
async def tasks(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/tasks")]):
    return await _to_risk(request, svc, caller, "/v1/tasks")


# The close-out ledger (销号式管理台账) and the risk profiles.


class EvidenceOut(BaseModel):
    event_id: str
    type: str
    time: datetime


class LedgerEvent(BaseModel):
    at: datetime
    what: str = Field(description="opened, evidence_added, followed_up, review_missed, signed, closed")
    by: str | None = None
    reason: str | None = None
    evidence: list[EvidenceOut] | None = None


class LedgerSignatureOut(BaseModel):
    role: Literal["police", "community_admin"]
    by: str
    reason: str
    at: datetime


class LedgerEntry(BaseModel):
    id: str
    rule: str = Field(description="the rule that opened it (a tag's rule, or any rule with a `ledger` effect)")
    person_hash: str
    household_code: str | None = None
    grid: str
    beat: str
    reason: str
    interval_days: float
    status: Literal["open", "closed"]
    opened_at: datetime
    last_follow_up_at: datetime | None = None
    next_review_at: datetime | None = None
    misses: int
    closed_at: datetime | None = None
    evidence: list[EvidenceOut]
    updated_at: datetime


class LedgerEntries(BaseModel):
    entries: list[LedgerEntry]


class LedgerEntryDetail(LedgerEntry):
    follow_ups: list[LedgerEvent]
    signatures: list[LedgerSignatureOut]
    history: list[LedgerEvent]


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")


@router.get("/ledger", response_model=LedgerEntries, summary="List the close-out ledger (销号式管理台账)")
async def ledger(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/ledger")]):
    """Key persons' entries, open and closed; filter by `status`, `rule`, `grid`, `beat`, `household_code`,
    `person_hash`, `overdue`. Grid workers and officers see their grids' and beat's."""
    return await _to_risk(request, svc, caller, "/v1/ledger")


@router.get("/ledger/{entry_id}", response_model=LedgerEntryDetail, summary="Read a ledger entry")
async def ledger_entry(
    entry_id: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/ledger/{entry_id}")],
):
    """The entry with its follow-ups, signatures and history."""
    return await _to_risk(request, svc, caller, f"/v1/ledger/{entry_id}")


@router.post(
    "/ledger/{entry_id}/close",
    response_model=LedgerEntryDetail,
    summary="Sign a ledger entry off (销号)",
)
async def close_ledger_entry(
    entry_id: str,
    body: Signature,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/ledger/{entry_id}/close")],
):
    """One of the two signatures, each with a reason: a police user's and a community admin's. The entry is
    closed when both are in; a second signature of the same role or by the same person is refused (409)."""
    return await _to_risk(request, svc, caller, f"/v1/ledger/{entry_id}/close")


class ScoreFactor(BaseModel):
    rule: str
    score: float = Field(description="what this rule's events are worth now, after decay")
    events: list[EvidenceOut]


class ScoreChange(BaseModel):
    at: datetime
    rule: str
    points: float
    half_life_days: float
    worth_now: float
    explanation: str
    evidence: list[EvidenceOut]


class TagOut(BaseModel):
    tag: str
    household_code: str
    grid: str
    beat: str
    active: bool
    at: datetime


class PersonProfile(BaseModel):
    person_hash: str
    score: float
    level: Literal["NONE", "LOW", "MEDIUM", "HIGH"]
    factors: list[ScoreFactor]
    history: list[ScoreChange]
    tags: list[TagOut]
    ledger: list[LedgerEntry]


class AlertBrief(BaseModel):
    id: str
    rule: str
    level: AlertLevel
    status: str
    raised_at: datetime


class TaskBrief(BaseModel):
    id: str
    rule: str
    title: str
    due_at: datetime


class HouseholdProfile(BaseModel):
    code: str
    address: str | None = None
    grid: str
    beat: str
    last_visited_at: datetime | None = None
    score: float
    level: Literal["NONE", "LOW", "MEDIUM", "HIGH"]
    factors: list[ScoreFactor]
    history: list[ScoreChange]
    alerts: list[AlertBrief]
    open_tasks: list[TaskBrief]


@router.get(
    "/profiles/persons/{person_hash}", response_model=PersonProfile, summary="A person's risk profile (by keyed hash)"
)
async def person_profile(
    person_hash: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/profiles/persons/{person_hash}")],
):
    """Current score and level (each factor halves every half-life the rule file gives), the factors by rule with
    their events, the history of every change, the person's tags and ledger entries."""
    return await _to_risk(request, svc, caller, f"/v1/profiles/persons/{person_hash}")


@router.get("/profiles/households/{code}", response_model=HouseholdProfile, summary="A household's risk profile")
async def household_profile(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/profiles/households/{code}")],
):
    """Current score and level, factors, history, the household's recent alerts and open tasks."""
    return await _to_risk(request, svc, caller, f"/v1/profiles/households/{code}")


class AddressHousehold(BaseModel):
    code: str
    address: str | None = None
    grid: str
    beat: str
    score: float
    level: Literal["NONE", "LOW", "MEDIUM", "HIGH"]


class AddressProfile(BaseModel):
    address: str
    score: float
    level: Literal["NONE", "LOW", "MEDIUM", "HIGH"]
    factors: list[ScoreFactor]
    history: list[ScoreChange]
    households: list[AddressHousehold]


@router.get("/profiles/addresses/{address}", response_model=AddressProfile, summary="An address's risk profile")
async def address_profile(
    address: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/profiles/addresses/{address}")],
):
    """The households at the address or under it (a building holds its flats): their scores summed, the factors
    and history together, and each household's own score."""
    return await _to_risk(request, svc, caller, f"/v1/profiles/addresses/{address}")
