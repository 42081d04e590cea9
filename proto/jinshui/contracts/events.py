"""Event models (the data of each CloudEvent). Published versions never change incompatibly: add v2 instead."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

HouseholdCode = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]
AreaCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

MAX_BATCH = 500


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VisitConcern(StrEnum):
    """What a grid worker saw that needs attention (走访发现)."""

    dispute = "dispute"
    hazard = "hazard"
    welfare_need = "welfare_need"
    urgent = "urgent"


class Submitter(Contract):
    sub: str
    role: str


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


class OutcomeStatus(StrEnum):
    applied = "applied"
    rejected = "rejected"


class RecordOutcome(Contract):
    index: int
    status: OutcomeStatus
    reason: str | None = None
    ref: str | None = None


class SubmissionSettled(Contract):
    """The owner's verdict on every record of one submission."""

    submission_id: str
    outcomes: list[RecordOutcome]


class AlertLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class Evidence(Contract):
    event_id: str
    type: str
    time: datetime


class AlertRaised(Contract):
    """Risk raised an alert for the police desk, with the rule and the events that led there."""

    alert_id: str
    rule: str
    level: AlertLevel
    household_code: HouseholdCode | None = None
    grid: AreaCode
    beat: AreaCode
    explanation: str
    evidence: list[Evidence]
    raised_at: datetime


# Every published contract: CloudEvents type -> (model, subject base).
EVENT_TYPES: dict[str, type[Contract]] = {
    "org.jinshui.intake.visit.submitted.v1": VisitsSubmitted,
    "org.jinshui.registry.household.registered.v1": HouseholdRegistered,
    "org.jinshui.registry.visit.recorded.v1": VisitRecorded,
    "org.jinshui.registry.submission.settled.v1": SubmissionSettled,
    "org.jinshui.risk.alert.raised.v1": AlertRaised,
}
TYPE_OF: dict[type[Contract], str] = {model: t for t, model in EVENT_TYPES.items()}


def parse(event_type: str, data: dict) -> Contract:
    """The model of a known event type, validated; KeyError for an unknown type."""
    return EVENT_TYPES[event_type].model_validate(data)
