"""Incidents at the door: police calls and grid reports submitted through INTAKE; the rest forwarded to incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from jinshui.contracts.base import MAX_BATCH, HouseholdCode
from jinshui.contracts.incidents import (
    GridReportRecord,
    HazardCategory,
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
