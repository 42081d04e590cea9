"""Risk contracts: alerts for the desk, gate sightings and watch-lists (and, to come, tasks, ledger, profiles)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from jinshui.contracts.base import MAX_BATCH, AreaCode, Contract, HouseholdCode, SubmissionSettled, Submitter

Plate = Annotated[str, StringConstraints(min_length=2, max_length=16, pattern=r"^[0-9A-Za-z\u4e00-\u9fff·.\- ]+$")]
KeyedHash = Annotated[str, StringConstraints(min_length=8, max_length=128)]


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


class AlertStatus(StrEnum):
    raised = "raised"
    acknowledged = "acknowledged"
    resolved = "resolved"
    dismissed = "dismissed"


class AlertChanged(Contract):
    """An alert moved on (acknowledged, resolved, dismissed), escalated, or gained evidence."""

    alert_id: str
    rule: str
    level: AlertLevel
    status: AlertStatus
    grid: AreaCode
    beat: AreaCode
    by: str | None = None
    reason: str | None = None
    attention: int = 0
    evidence: list[Evidence] = Field(default_factory=list)
    at: datetime


def normalize_plate(plate: str) -> str:
    """Plates compare without spaces, dots or dashes, upper-cased (京A·12345 == 京a12345)."""
    return "".join(c for c in plate.upper() if c not in " .·-")


class SightingRecord(Contract):
    """One sighting at an estate gate: a plate, or a person (by keyed hash, made at the door), or both."""

    gate: AreaCode
    seen_at: datetime
    plate: Plate | None = None
    person_hash: KeyedHash | None = None
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _something_seen(self) -> SightingRecord:
        if self.plate is None and self.person_hash is None:
            raise ValueError("a sighting needs a plate or a person")
        return self


class SightingsSubmitted(Contract):
    """A batch of gate sightings accepted at the door (SIGHTINGS, short retention)."""

    submission_id: str
    submitter: Submitter
    received_at: datetime
    records: list[SightingRecord] = Field(min_length=1, max_length=MAX_BATCH)


class WatchKind(StrEnum):
    plate = "plate"
    person = "person"


class WatchEntryChanged(Contract):
    """A watch-list entry was added or removed (police only)."""

    entry_id: str
    kind: WatchKind
    masked: str
    level: AlertLevel
    reason: str
    expires_at: datetime | None = None
    active: bool
    by: str
    at: datetime


class TaskStatus(StrEnum):
    open = "open"
    done = "done"


class TaskChanged(Contract):
    """A follow-up task for a grid worker was created by a rule, or closed by the visit it asked for."""

    task_id: str
    rule: str
    title: str
    status: TaskStatus
    household_code: HouseholdCode | None = None
    grid: AreaCode
    beat: AreaCode
    assignee: str | None = None
    alert_id: str | None = None
    due_at: datetime
    evidence: list[Evidence]
    at: datetime


class LedgerStatus(StrEnum):
    open = "open"
    closed = "closed"


class SignerRole(StrEnum):
    police = "police"
    community_admin = "community_admin"


class LedgerSignature(Contract):
    """One of the two signatures that close a ledger entry (销号): a police user's and a community admin's."""

    role: SignerRole
    by: str
    reason: str
    at: datetime


class LedgerEntryChanged(Contract):
    """A close-out ledger entry (销号式管理台账) for a key person was opened, followed up, signed or closed."""

    entry_id: str
    rule: str
    person_hash: KeyedHash
    household_code: HouseholdCode | None = None
    grid: AreaCode
    beat: AreaCode
    status: LedgerStatus
    interval_days: float
    next_review_at: datetime | None = None
    misses: int = 0
    by: str | None = None
    reason: str | None = None
    signatures: list[LedgerSignature] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    at: datetime


class LedgerReviewMissed(Contract):
    """A ledger entry got no follow-up visit within its review interval (risk's own window, rule 6)."""

    entry_id: str
    rule: str
    person_hash: KeyedHash
    household_code: HouseholdCode | None = None
    grid: AreaCode
    beat: AreaCode
    misses: int = Field(ge=1, description="reviews missed in a row")
    interval_days: float
    due_at: datetime
    last_follow_up_at: datetime | None = None


class DepartureUnconfirmed(Contract):
    """A letting was stopped and some of its tenants' residencies were still open after the window (rule 3)."""

    letting_id: str
    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    stopped_on: date
    still_resident: int = Field(ge=1)
    window_days: float
    letting_stopped_event: str


class VisitOverdue(Contract):
    """A household not yet visited this month by the month's last week (Asia/Shanghai; rule 7)."""

    household_code: HouseholdCode
    grid: AreaCode
    beat: AreaCode
    month: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}$")
    last_visited_at: datetime | None = None


TYPES: dict[str, type[Contract]] = {
    "org.jinshui.risk.alert.raised.v1": AlertRaised,
    "org.jinshui.risk.alert.acknowledged.v1": AlertChanged,
    "org.jinshui.risk.alert.resolved.v1": AlertChanged,
    "org.jinshui.risk.alert.dismissed.v1": AlertChanged,
    "org.jinshui.risk.alert.escalated.v1": AlertChanged,
    "org.jinshui.risk.alert.evidence_added.v1": AlertChanged,
    "org.jinshui.risk.watch_entry.changed.v1": WatchEntryChanged,
    "org.jinshui.risk.task.created.v1": TaskChanged,
    "org.jinshui.risk.task.closed.v1": TaskChanged,
    "org.jinshui.risk.ledger.opened.v1": LedgerEntryChanged,
    "org.jinshui.risk.ledger.followed_up.v1": LedgerEntryChanged,
    "org.jinshui.risk.ledger.signed.v1": LedgerEntryChanged,
    "org.jinshui.risk.ledger.closed.v1": LedgerEntryChanged,
    "org.jinshui.risk.ledger.review_missed.v1": LedgerReviewMissed,
    "org.jinshui.risk.letting.departure_unconfirmed.v1": DepartureUnconfirmed,
    "org.jinshui.risk.household.visit_overdue.v1": VisitOverdue,
    "org.jinshui.risk.submission.settled.v1": SubmissionSettled,
    "org.jinshui.sightings.batch.submitted.v1": SightingsSubmitted,
}
