"""Incidents contracts: the one incident stream (police calls 警情 and grid reports), joint incidents, lifecycle."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from jinshui.contracts.base import MAX_BATCH, AreaCode, Contract, HouseholdCode, SubmissionSettled, Submitter

__all__ = [
    "DeadlineFired",
    "ExtensionDecided",
    "ExtensionRequested",
    "FollowUpRecorded",
    "GridReportRecord",
    "HazardCategory",
    "HazardInspected",
    "IncidentOpened",
    "IncidentPaused",
    "IncidentResumed",
    "IncidentStatus",
    "IncidentTransitioned",
    "InspectionResult",
    "MatchReason",
    "MediationMethod",
    "MediationOutcome",
    "MediationRecorded",
    "PersonLinked",
    "PersonMention",
    "PoliceCallRecord",
    "PoliceCallsSubmitted",
    "PoliceCategory",
    "ProtectedValue",
    "RectificationDeadlineSet",
    "RectificationOverdue",
    "ReportKind",
    "ReportsSubmitted",
    "SatisfactionRecorded",
    "SourceLinked",
    "SourceOrigin",
    "SourceRef",
    "SourceUnlinked",
]

# Subjects (the ordering key, an incident id, goes last where order matters).
INTAKE_POLICE_CALLS = "intake.police_call.submitted"
INTAKE_REPORTS = "intake.report.submitted"
INCIDENTS_SUBMISSION_SETTLED = "incidents.submission.settled"
INCIDENTS_INCIDENT = "incidents.incident"  # + .<verb>.<incident id>
INCIDENTS_DEADLINE = "incidents.deadline"  # + .<stage>.<incident id>
INCIDENTS_HAZARD = "incidents.hazard"  # + .<verb>.<incident id>

Text = Annotated[str, StringConstraints(max_length=4000)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class PoliceCategory(StrEnum):
    """The police platform's category of a call (警情类别)."""

    dispute = "dispute"
    domestic = "domestic"
    fight = "fight"
    noise = "noise"
    theft = "theft"
    fraud = "fraud"
    fire = "fire"
    gas = "gas"
    traffic = "traffic"
    rescue = "rescue"
    other = "other"


class ReportKind(StrEnum):
    """What a grid worker reports."""

    dispute = "dispute"
    hazard = "hazard"
    lead = "lead"
    patrol_finding = "patrol_finding"


class HazardCategory(StrEnum):
    """Safety hazards (隐患) met in the community."""

    falling_tiles = "falling_tiles"
    blocked_fire_lane = "blocked_fire_lane"
    basement_misuse = "basement_misuse"
    gas = "gas"
    electrical = "electrical"
    other = "other"


class SourceOrigin(StrEnum):
    police_call = "police_call"
    report = "report"
    visit = "visit"


class IncidentStatus(StrEnum):
    reported = "reported"
    accepted = "accepted"
    assigned = "assigned"
    in_mediation = "in_mediation"
    in_hand = "in_hand"
    resolved = "resolved"
    closed = "closed"
    escalated = "escalated"
    reopened = "reopened"


class MediationMethod(StrEnum):
    """三式调解: homely talk (家常式), reasoning (说理式), guidance (引导式)."""

    homely = "homely"
    reasoning = "reasoning"
    guidance = "guidance"


class MediationOutcome(StrEnum):
    agreed = "agreed"
    failed = "failed"
    pre_litigation = "pre_litigation"  # referred to pre-litigation mediation 诉前调解
    court = "court"
    pending = "pending"


class ProtectedValue(Contract):
    """An ID number as the gateway protects it (jinshui.kit.pii.Protected): never in clear on a stream."""

    kind: Literal["id_number", "phone"]
    hash: str
    ciphertext: str
    key_id: str
    masked: str


class PersonMention(Contract):
    """A person involved, by protected ID number or only by name (then an unresolved mention)."""

    name: str | None = Field(default=None, max_length=100)
    id_number: ProtectedValue | None = None
    role: str | None = Field(default=None, max_length=50)

    @model_validator(mode="after")
    def _named_somehow(self) -> PersonMention:
        if not self.name and self.id_number is None:
            raise ValueError("a person needs a name or an ID number")
        return self


class PoliceCallRecord(Contract):
    """One police call (警情) from the police platform, persons protected at the door."""

    call_id: ShortText
    received_at: datetime
    category: PoliceCategory
    household_code: HouseholdCode | None = None
    address: str | None = Field(default=None, max_length=200)
    description: Text = ""
    persons: list[PersonMention] = Field(default_factory=list, max_length=50)
    priority: int = Field(default=3, ge=1, le=5)


class GridReportRecord(Contract):
    """One grid worker's report: a dispute, hazard, lead or patrol finding."""

    kind: ReportKind
    reported_at: datetime
    report_id: ShortText | None = None
    household_code: HouseholdCode | None = None
    address: str | None = Field(default=None, max_length=200)
    hazard_category: HazardCategory | None = None
    description: Text = ""
    persons: list[PersonMention] = Field(default_factory=list, max_length=50)
    photos: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=20
    )
    # A hazard's deadline for rectification (整改期限), when the reporter sets one; else the category's default.
    rectification_deadline: datetime | None = None


class PoliceCallsSubmitted(Contract):
    """A batch of police calls accepted at the door (INTAKE)."""

    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[PoliceCallRecord] = Field(min_length=1, max_length=MAX_BATCH)


class ReportsSubmitted(Contract):
    """A batch of grid reports accepted at the door (INTAKE)."""

    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[GridReportRecord] = Field(min_length=1, max_length=MAX_BATCH)


class MatchReason(Contract):
    """Why a source joined an incident: the fields that matched and a score in [0, 1]."""

    fields: list[str]
    score: float
    matched_source_id: str | None = None
    by: str | None = None  # who linked by hand
    note: str | None = None


class SourceRef(Contract):
    source_id: str
    origin: SourceOrigin
    external_id: str
    category: str
    # The persons the source names, by keyed hash of their ID number (never the number): risk matches its tags.
    person_hashes: list[str] = Field(default_factory=list)


class IncidentOpened(Contract):
    """A new incident, from its first source."""

    incident_id: str
    category: str
    kind: str
    status: IncidentStatus
    household_code: HouseholdCode | None = None
    address: str | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None
    priority: int
    source: SourceRef
    opened_at: datetime


class SourceLinked(Contract):
    """A source joined an incident (correlated, or linked by hand), with the reason."""

    incident_id: str
    source: SourceRef
    reason: MatchReason
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None
    at: datetime


class SourceUnlinked(Contract):
    """A source was taken out of an incident by hand, into an incident of its own."""

    incident_id: str
    source: SourceRef
    new_incident_id: str
    by: str
    reason: str
    at: datetime


class IncidentTransitioned(Contract):
    """An incident moved from one state to another."""

    incident_id: str
    from_status: IncidentStatus
    to_status: IncidentStatus
    by: str
    role: str
    reason: str
    at: datetime
    category: str
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class MediationRecorded(Contract):
    """A mediation session (调解) and, when reached, its agreement and outcome."""

    incident_id: str
    mediation_id: str
    mediators: list[str]
    method: MediationMethod
    held_at: datetime
    outcome: MediationOutcome
    agreement: str | None = None
    by: str
    at: datetime


class SatisfactionRecorded(Contract):
    """The parties' satisfaction, recorded at closing."""

    incident_id: str
    satisfied: bool
    score: int | None = None
    by: str
    at: datetime


class DeadlineFired(Contract):
    """A deadline of an incident (to accept or to resolve) is near, or has passed (督办)."""

    incident_id: str
    deadline: Literal["accept", "resolve"]
    stage: Literal["due_soon", "overdue"]
    due_at: datetime
    category: str
    status: IncidentStatus
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class InspectionResult(StrEnum):
    rectified = "rectified"
    not_rectified = "not_rectified"


class RectificationDeadlineSet(Contract):
    """A hazard's deadline for rectification (整改期限) was set: at report time, by a handler, or after a
    re-inspection found it not rectified."""

    incident_id: str
    hazard_category: str
    deadline: datetime
    previous: datetime | None = None
    by: str
    reason: str
    at: datetime
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class HazardInspected(Contract):
    """A re-inspection (复查) of a hazard: rectified, or not (perhaps with a new deadline)."""

    incident_id: str
    inspection_id: str
    result: InspectionResult
    note: str = ""
    inspected_at: datetime
    new_deadline: datetime | None = None
    by: str
    role: str
    at: datetime
    hazard_category: str | None = None
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class RectificationOverdue(Contract):
    """A hazard's rectification deadline passed with no re-inspection finding it rectified."""

    incident_id: str
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None
    hazard_category: str
    deadline: datetime
    status: IncidentStatus


class IncidentPaused(Contract):
    """The incident's clocks stopped while waiting on a party (e.g. a party away, an expert opinion)."""

    incident_id: str
    waiting_on: str
    reason: str
    by: str
    at: datetime
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class IncidentResumed(Contract):
    """The incident's clocks run again; every pending deadline moved by the time paused."""

    incident_id: str
    paused_seconds: float
    reason: str
    by: str
    at: datetime
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class ExtensionRequested(Contract):
    """More time to resolve asked for (申请延期), with the reason."""

    incident_id: str
    extension_id: str
    days: int
    reason: str
    by: str
    at: datetime
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class ExtensionDecided(Contract):
    """An extension approved (the time to resolve moved) or refused."""

    incident_id: str
    extension_id: str
    decision: Literal["approved", "refused"]
    reason: str
    resolve_due_before: datetime | None = None
    resolve_due_after: datetime | None = None
    by: str
    at: datetime
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class FollowUpRecorded(Contract):
    """A follow-up visit after closing (事后消解): is the matter still settled?"""

    incident_id: str
    follow_up_id: str
    visited_by: str
    visited_at: datetime
    note: str = ""
    still_settled: bool
    by: str
    at: datetime
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None


class PersonLinked(Contract):
    """A person named only by name in a source was linked by hand to a person by ID number (its keyed hash).

    `source` is the source as it is now, in the shape risk's rules read (`source.person_hashes`...).
    """

    incident_id: str
    source: SourceRef
    person_index: int = Field(ge=0)
    id_masked: str
    by: str
    reason: str
    at: datetime
    household_code: HouseholdCode | None = None
    grid: AreaCode | None = None
    beat: AreaCode | None = None


# CloudEvents type -> model, for every contract this domain publishes (or the gateway publishes for it).
TYPES: dict[str, type[Contract]] = {
    "org.jinshui.intake.police_call.submitted.v1": PoliceCallsSubmitted,
    "org.jinshui.intake.report.submitted.v1": ReportsSubmitted,
    "org.jinshui.incidents.submission.settled.v1": SubmissionSettled,
    "org.jinshui.incidents.incident.opened.v1": IncidentOpened,
    "org.jinshui.incidents.incident.source_linked.v1": SourceLinked,
    "org.jinshui.incidents.incident.source_unlinked.v1": SourceUnlinked,
    "org.jinshui.incidents.incident.transitioned.v1": IncidentTransitioned,
    "org.jinshui.incidents.incident.mediation_recorded.v1": MediationRecorded,
    "org.jinshui.incidents.incident.satisfaction_recorded.v1": SatisfactionRecorded,
    "org.jinshui.incidents.deadline.due_soon.v1": DeadlineFired,
    "org.jinshui.incidents.deadline.overdue.v1": DeadlineFired,
    "org.jinshui.incidents.hazard.deadline_set.v1": RectificationDeadlineSet,
    "org.jinshui.incidents.hazard.inspected.v1": HazardInspected,
    "org.jinshui.incidents.hazard.rectification_overdue.v1": RectificationOverdue,
    "org.jinshui.incidents.incident.paused.v1": IncidentPaused,
    "org.jinshui.incidents.incident.resumed.v1": IncidentResumed,
    "org.jinshui.incidents.incident.extension_requested.v1": ExtensionRequested,
    "org.jinshui.incidents.incident.extension_decided.v1": ExtensionDecided,
    "org.jinshui.incidents.incident.follow_up_recorded.v1": FollowUpRecorded,
    "org.jinshui.incidents.incident.person_linked.v1": PersonLinked,
}
