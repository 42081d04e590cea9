"""Registry contracts: households (一户一码), visits (走访) and what the registry publishes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from jinshui.contracts.base import MAX_BATCH, AreaCode, Contract, HouseholdCode, SubmissionSettled, Submitter


class VisitConcern(StrEnum):
    """What a grid worker saw that needs attention (走访发现)."""

    dispute = "dispute"
    hazard = "hazard"
    welfare_need = "welfare_need"
    urgent = "urgent"


class VisitRecord(Contract):
    """One household visit (走访) as a grid worker reports it."""

    household_code: HouseholdCode
    visited_at: datetime
    concerns: list[VisitConcern] = Field(default_factory=list, max_length=4)
    people_present: int = Field(default=0, ge=0, le=100)
    follow_up_requested: bool = False
    note: str = Field(default="", max_length=2000)


class VisitsSubmitted(Contract):
    """A batch of visits accepted at the door (INTAKE)."""

    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[VisitRecord] = Field(min_length=1, max_length=MAX_BATCH)


class HouseholdRegistered(Contract):
    """A household was given its code (一户一码) at an address, in a grid and a police beat."""

    code: HouseholdCode
    address: str
    grid: AreaCode
    beat: AreaCode
    registered_at: datetime


class VisitRecorded(Contract):
    """The registry recorded a visit; carries the household's grid and beat (reference data travels by event)."""

    visit_id: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    grid_worker: str
    visited_at: datetime
    concerns: list[VisitConcern]
    follow_up_requested: bool
    submission_id: str
    record_index: int


# CloudEvents type -> model, for every contract this domain publishes (or the gateway publishes for it).
TYPES: dict[str, type[Contract]] = {
    "org.jinshui.intake.visit.submitted.v1": VisitsSubmitted,
    "org.jinshui.registry.household.registered.v1": HouseholdRegistered,
    "org.jinshui.registry.visit.recorded.v1": VisitRecorded,
    "org.jinshui.registry.submission.settled.v1": SubmissionSettled,
}
