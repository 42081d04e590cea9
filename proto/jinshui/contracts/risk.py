"""Risk contracts: alerts for the desk (and, to come, tasks, ledger, profiles)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from jinshui.contracts.base import AreaCode, Contract, HouseholdCode


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


TYPES: dict[str, type[Contract]] = {
    "org.jinshui.risk.alert.raised.v1": AlertRaised,
}
