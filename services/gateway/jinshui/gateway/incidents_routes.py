"""Incidents at the door: police calls and grid reports submitted through INTAKE; the rest forwarded to incidents."""

from __future__ import annotations

import inspect
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from jinshui.contracts.base import MAX_BATCH, HouseholdCode
from jinshui.contracts.incidents import (
    FollowUpRecorded,
    GridReportRecord,
    HazardCategory,
    HazardInspected,
    IncidentStatus,
    InspectionResult,
    PersonMention,
    PoliceCallRecord,
    PoliceCallsSubmitted,
    PoliceCategory,
    ProtectedValue,
    ReportKind,
    ReportsSubmitted,
)
from jinshui.gateway.api import accept_submission
from jinshui.gateway.proxy import forward
from jinshui.gateway.rbac import allowed
from jinshui.kit.app import ServiceDep
from jinshui.kit.pii import IdNumber, Keyring
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PersonIn(_In):
    """A person involved: by resident ID number (protected at once) or only by name."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    id_number: IdNumber | None = None
    role: str | None = Field(default=None, max_length=50)

    @model_validator(mode="after")
    def _named_somehow(self) -> PersonIn:
        if not self.name and self.id_number is None:
            raise ValueError("a person needs a name or an ID number")
        return self


class _Located(_In):
    household_code: HouseholdCode | None = None
    address: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _somewhere(self):
        if self.household_code is None and self.address is None:
            raise ValueError("give the household code or the address")
        return self


class PoliceCallIn(_Located):
    call_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    received_at: datetime
    category: PoliceCategory
    description: str = Field(default="", max_length=4000)
    persons: list[PersonIn] = Field(default_factory=list, max_length=50)
    priority: int = Field(default=3, ge=1, le=5)


class ReportIn(_Located):
    kind: ReportKind
    reported_at: datetime
    report_id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    hazard_category: HazardCategory | None = None
    description: str = Field(default="", max_length=4000)
    persons: list[PersonIn] = Field(default_factory=list, max_length=50)
    photos: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=20
    )
    rectification_deadline: datetime | None = Field(
        default=None, description="A hazard's deadline for rectification; else the hazard category's default."
    )

    @model_validator(mode="after")
    def _deadline_for_hazards(self) -> ReportIn:
        if self.rectification_deadline is None:
            return self
        if self.kind != ReportKind.hazard:
            raise ValueError("rectification_deadline is for hazard reports only")
        if self.rectification_deadline <= self.reported_at:
            raise ValueError("rectification_deadline must be later than reported_at")
        return self


class PoliceCallBatch(_In):
    """Up to 500 police calls (警情) from the police platform or a police user."""

    calls: list[PoliceCallIn] = Field(min_length=1, max_length=MAX_BATCH)


class ReportBatch(_In):
    """Up to 500 reports from grid workers: disputes, hazards, leads, patrol findings."""

    reports: list[ReportIn] = Field(min_length=1, max_length=MAX_BATCH)


def protect(keyring: Keyring, persons: list[PersonIn]) -> list[PersonMention]:
    """ID numbers leave the door only as {keyed hash, ciphertext, key id, masked}."""
    return [
        PersonMention(
            name=p.name,
            role=p.role,
            id_number=ProtectedValue(**keyring.protect_id_number(p.id_number).model_dump()) if p.id_number else None,
        )
        for p in persons
    ]


async def _submit_batch(request: Request, svc, caller: Identity, prefer: str | None, *, kind: str, model, make):
    """One INTAKE message for the batch, its records built by `make(keyring)` (ID numbers protected)."""
    return await accept_submission(
        request,
        svc,
        caller,
        prefer,
        kind=kind,
        event_type=f"org.jinshui.intake.{kind}.submitted.v1",
        subject=f"intake.{kind}.submitted",
        make=lambda keyring, **head: model(**head, records=make(keyring)),
    )


@router.post("/police-calls", status_code=202)
async def submit_police_calls(
    batch: PoliceCallBatch,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/police-calls")],
    prefer: Annotated[str | None, Header()] = None,
):
    def make(keyring: Keyring) -> list[PoliceCallRecord]:
        return [
            PoliceCallRecord(**c.model_dump(exclude={"persons"}), persons=protect(keyring, c.persons))
            for c in batch.calls
        ]

    return await _submit_batch(request, svc, caller, prefer, kind="police_call", model=PoliceCallsSubmitted, make=make)


@router.post("/reports", status_code=202)
async def submit_reports(
    batch: ReportBatch,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/reports")],
    prefer: Annotated[str | None, Header()] = None,
):
    def make(keyring: Keyring) -> list[GridReportRecord]:
        return [
            GridReportRecord(**r.model_dump(exclude={"persons"}), persons=protect(keyring, r.persons))
            for r in batch.reports
        ]

    return await _submit_batch(request, svc, caller, prefer, kind="report", model=ReportsSubmitted, make=make)


# --- forwarded to the incidents service, which owns the data ---------------------------------------------------
def _to_incidents(method: str, path: str):
    door = allowed(method, path)

    async def endpoint(request: Request, svc: ServiceDep, caller: Identity = door):
        return await forward(request, svc, caller, svc.settings.incidents_url, request.url.path)

    endpoint.__name__ = f"{method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}"
    return endpoint


FORWARDED = (
    ("GET", "/v1/incidents"),
    ("GET", "/v1/incidents/{incident_id}"),
    ("POST", "/v1/incidents/{incident_id}/transitions"),
    ("POST", "/v1/incidents/{incident_id}/mediations"),
    ("POST", "/v1/incidents/{incident_id}/satisfaction"),
    ("POST", "/v1/incidents/{incident_id}/sources"),
    ("POST", "/v1/incidents/{incident_id}/sources/{source_id}/unlink"),
    ("GET", "/v1/sources/unresolved"),
    ("GET", "/v1/stats/incidents"),
)
for _method, _path in FORWARDED:
    router.add_api_route(_path.removeprefix("/v1"), _to_incidents(_method, _path), methods=[_method])


# --- hazards, clocks and follow-ups: validated at the door, then forwarded --------------------------------------
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class IncidentOut(BaseModel):
    """An incident with its sources, timeline, mediation record, hazard, deadlines and follow-ups."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: IncidentStatus
    category: str
    kind: str
    hazard: dict[str, Any] | None = None
    paused: dict[str, Any] | None = None
    timeline: list[dict[str, Any]]
    deadlines: list[dict[str, Any]]
    follow_ups: list[dict[str, Any]]


class ExtensionOut(BaseModel):
    """An extension of the time to resolve, asked for and (once decided) approved or refused."""

    id: str
    incident_id: str
    days: int
    reason: str
    status: Literal["requested", "approved", "refused"]
    requested_by: str
    requested_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    resolve_due_before: datetime | None = None
    resolve_due_after: datetime | None = None


class RectificationDeadlineIn(_In):
    deadline: datetime | None = None
    days: int | None = Field(default=None, ge=1, le=365, description="Working days from now")
    hazard_category: HazardCategory | None = None
    reason: Reason


class InspectionIn(_In):
    result: InspectionResult
    note: str = Field(default="", max_length=4000)
    inspected_at: datetime | None = None
    new_deadline: datetime | None = None
    new_deadline_days: int | None = Field(default=None, ge=1, le=365, description="Working days from now")


class PauseIn(_In):
    waiting_on: str = Field(min_length=1, max_length=200)
    reason: Reason


class ResumeIn(_In):
    reason: Reason


class ExtensionIn(_In):
    days: int = Field(ge=1, le=60)
    reason: Reason


class ExtensionDecisionIn(_In):
    decision: Literal["approved", "refused"]
    reason: Reason


class FollowUpIn(_In):
    visited_at: datetime
    visited_by: str | None = Field(default=None, min_length=1, max_length=100)
    note: str = Field(default="", max_length=4000)
    still_settled: bool
    reopen: bool = Field(default=False, description="Reopen the incident (only when not still settled)")


def _command(path: str, body_model: type[BaseModel], *, summary: str, description: str, **route):
    """A command forwarded to incidents, its body validated (and documented) at the door."""

    async def endpoint(request: Request, svc: ServiceDep, caller: Identity, **_):
        return await forward(request, svc, caller, svc.settings.incidents_url, request.url.path)

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(name, keyword, annotation=str) for name in re.findall(r"{(\w+)}", path)] + [
        inspect.Parameter("body", keyword, annotation=body_model),
        inspect.Parameter("request", keyword, annotation=Request),
        inspect.Parameter("svc", keyword, annotation=ServiceDep),
        inspect.Parameter("caller", keyword, annotation=Identity, default=allowed("POST", path)),
    ]
    endpoint.__signature__ = inspect.Signature(params)
    endpoint.__name__ = "post_" + re.sub(r"[^a-z0-9]+", "_", path.removeprefix("/v1/")).strip("_")
    router.add_api_route(
        path.removeprefix("/v1"), endpoint, methods=["POST"], summary=summary, description=description, **route
    )


_command(
    "/v1/incidents/{incident_id}/rectification-deadline",
    RectificationDeadlineIn,
    summary="Set a hazard's rectification deadline (整改期限)",
    description="A date, or working days from now, or the hazard category's default; a reason is required.",
    response_model=IncidentOut,
)
_command(
    "/v1/incidents/{incident_id}/inspections",
    InspectionIn,
    summary="Record a hazard's re-inspection (复查)",
    description="`rectified` lets the incident be resolved; `not_rectified` may set a new deadline.",
    response_model=HazardInspected,
    status_code=201,
)
_command(
    "/v1/incidents/{incident_id}/pause",
    PauseIn,
    summary="Pause an incident's clocks",
    description="While waiting on a party: no deadline runs until it is resumed.",
    response_model=IncidentOut,
)
_command(
    "/v1/incidents/{incident_id}/resume",
    ResumeIn,
    summary="Resume an incident's clocks",
    description="Every pending deadline moves on by the time paused.",
    response_model=IncidentOut,
)
_command(
    "/v1/incidents/{incident_id}/extensions",
    ExtensionIn,
    summary="Ask for more time to resolve (申请延期)",
    description="Days and a reason; one request waits for a decision at a time.",
    response_model=ExtensionOut,
    status_code=201,
)
_command(
    "/v1/incidents/{incident_id}/extensions/{extension_id}/decision",
    ExtensionDecisionIn,
    summary="Approve or refuse an extension",
    description="Approved moves the time to resolve and its timers; a decision is made once.",
    response_model=ExtensionOut,
)
_command(
    "/v1/incidents/{incident_id}/follow-ups",
    FollowUpIn,
    summary="Record a follow-up visit after closing (事后消解)",
    description="Is it still settled? One that is not may reopen the incident.",
    response_model=FollowUpRecorded,
    status_code=201,
)


# --- persons named only by name: listed, and linked by hand to an ID number sealed here -------------------------
class UnresolvedMention(BaseModel):
    """A person a source names only by name (an unresolved mention), with where it stands."""

    incident_id: str
    source_id: str
    index: int = Field(description="The person's place in the source's list of persons")
    name: str | None = None
    role: str | None = None
    origin: str
    external_id: str
    category: str
    occurred_at: datetime
    received_at: datetime
    household_code: str | None = None
    address: str | None = None
    address_resolved: bool
    status: IncidentStatus
    grid: str | None = None
    beat: str | None = None


class MentionPage(BaseModel):
    items: list[UnresolvedMention]
    next_cursor: str | None = None


class PersonLinkIn(_In):
    id_number: IdNumber
    reason: Reason


class PersonLinkedOut(BaseModel):
    """The mention, now identified: only the masked form of the number is shown."""

    incident_id: str
    source_id: str
    index: int
    name: str | None = None
    role: str | None = None
    id_masked: str
    resolved: bool
    linked_by: str
    linked_at: datetime
    reason: str


@router.get(
    "/mentions/unresolved",
    response_model=MentionPage,
    summary="Persons named only by name, waiting to be linked",
    description="Oldest first, within the caller's grids and beats; `next_cursor` gives the next page.",
)
async def unresolved_mentions(
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/mentions/unresolved")],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
):
    return await forward(request, svc, caller, svc.settings.incidents_url, request.url.path)


@router.post(
    "/incidents/{incident_id}/sources/{source_id}/persons/{index}/link",
    response_model=PersonLinkedOut,
    summary="Link a person named only by name to their ID number",
    description="The ID number is sealed here, as for police calls; incidents gets its keyed hash and masked form.",
)
async def link_person(
    incident_id: str,
    source_id: str,
    index: Annotated[int, Path(ge=0, le=49)],
    body: PersonLinkIn,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[
        Identity, allowed("POST", "/v1/incidents/{incident_id}/sources/{source_id}/persons/{index}/link")
    ],
):
    [mention] = protect(svc.app.state.keyring, [PersonIn(id_number=body.id_number)])
    sealed = {"id_number": mention.id_number.model_dump(mode="json"), "reason": body.reason}
    return await forward(request, svc, caller, svc.settings.incidents_url, request.url.path, body=orjson.dumps(sealed))
