"""The incidents domain's rules: categories and their groups, correlation windows, deadlines, the state machine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jinshui.contracts.incidents import IncidentStatus as S
from jinshui.contracts.incidents import PoliceCategory, ReportKind
from jinshui.incidents.workdays import add_working_days

# Which categories can be the same trouble seen from two sides (the correlation group, "kind").
KIND_OF: dict[str, str] = {
    PoliceCategory.dispute: "dispute",
    PoliceCategory.domestic: "dispute",
    PoliceCategory.fight: "dispute",
    PoliceCategory.noise: "dispute",
    PoliceCategory.fire: "hazard",
    PoliceCategory.gas: "hazard",
    PoliceCategory.theft: "crime",
    PoliceCategory.fraud: "crime",
    PoliceCategory.traffic: "emergency",
    PoliceCategory.rescue: "emergency",
    PoliceCategory.other: "other",
}
REPORT_KIND: dict[str, str] = {
    ReportKind.dispute: "dispute",
    ReportKind.hazard: "hazard",
    ReportKind.lead: "crime",
    ReportKind.patrol_finding: "patrol_finding",
}
# How far apart two sources may be in time and still be the same trouble, per group.
WINDOWS: dict[str, timedelta] = {
    "dispute": timedelta(hours=72),
    "hazard": timedelta(days=7),
    "crime": timedelta(hours=24),
    "emergency": timedelta(hours=6),
    "patrol_finding": timedelta(hours=24),
    "other": timedelta(hours=12),
}
MATCH_THRESHOLD = 0.5


@dataclass(frozen=True)
class DeadlineRule:
    accept: float
    resolve: float
    unit: str  # "hours" (police: clock hours) | "working_days" (mediation, hazards)

    def due(self, start: datetime, amount: float) -> datetime:
        if self.unit == "hours":
            return start + timedelta(hours=amount)
        return add_working_days(start, int(amount))


# Per incident category (its first source's category): police categories in clock hours; grid reports, which
# go to mediation or rectification, in working days.
DEADLINES: dict[str, DeadlineRule] = {
    "police:dispute": DeadlineRule(1, 24, "hours"),
    "police:domestic": DeadlineRule(1, 24, "hours"),
    "police:fight": DeadlineRule(0.5, 24, "hours"),
    "police:noise": DeadlineRule(2, 48, "hours"),
    "police:theft": DeadlineRule(1, 72, "hours"),
    "police:fraud": DeadlineRule(1, 72, "hours"),
    "police:fire": DeadlineRule(0.25, 4, "hours"),
    "police:gas": DeadlineRule(0.25, 4, "hours"),
    "police:traffic": DeadlineRule(0.5, 8, "hours"),
    "police:rescue": DeadlineRule(0.25, 4, "hours"),
    "police:other": DeadlineRule(2, 48, "hours"),
    "report:dispute": DeadlineRule(1, 10, "working_days"),
    "report:hazard": DeadlineRule(1, 5, "working_days"),
    "report:lead": DeadlineRule(1, 5, "working_days"),
    "report:patrol_finding": DeadlineRule(2, 10, "working_days"),
}
DEADLINE_NAMES = ("accept", "resolve")
STAGES = ("due_soon", "overdue")
TIMER_KIND = "incident_deadline"
DUE_SOON_FRACTION = 0.2  # "due soon" when a fifth of the time is left


def category_key(origin: str, category: str) -> str:
    return f"{'police' if origin == 'police_call' else 'report'}:{category}"


def deadlines(category: str, start: datetime) -> dict[str, datetime]:
    rule = DEADLINES[category]
    return {"accept": rule.due(start, rule.accept), "resolve": rule.due(start, rule.resolve)}


def timer_ref(incident_id: str, deadline: str, stage: str) -> str:
    return f"{incident_id}:{deadline}:{stage}"


def due_soon_at(start: datetime, due: datetime) -> datetime:
    return due - (due - start) * DUE_SOON_FRACTION


# The state machine: the moves allowed from each state.
MOVES: dict[S, tuple[S, ...]] = {
    S.reported: (S.accepted, S.escalated),
    S.accepted: (S.assigned, S.escalated),
    S.assigned: (S.in_mediation, S.in_hand, S.escalated),
    S.in_mediation: (S.resolved, S.in_hand, S.escalated),
    S.in_hand: (S.resolved, S.in_mediation, S.escalated),
    S.escalated: (S.assigned, S.in_mediation, S.in_hand, S.resolved),
    S.resolved: (S.closed, S.reopened),
    S.closed: (S.reopened,),
    S.reopened: (S.accepted, S.assigned, S.in_mediation, S.in_hand),
}
# Who may move an incident into each state.
MOVERS: dict[S, tuple[str, ...]] = {
    S.accepted: ("police", "mediator", "community_admin"),
    S.assigned: ("police", "mediator", "community_admin"),
    S.in_mediation: ("mediator", "community_admin"),
    S.in_hand: ("police", "grid_worker", "community_admin"),
    S.resolved: ("police", "mediator", "grid_worker", "community_admin"),
    S.closed: ("police", "mediator", "community_admin"),
    S.escalated: ("police", "mediator", "grid_worker", "community_admin"),
    S.reopened: ("police", "mediator", "community_admin"),
}
OPEN_STATES = frozenset(S) - {S.closed}
# Reaching these states settles the deadline of that name.
SETTLES: dict[S, str] = {S.accepted: "accept", S.resolved: "resolve", S.closed: "resolve"}

# Hazards (隐患): the default time to rectify (整改期限), in working days from the report, per hazard category.
HAZARD_CATEGORY = "report:hazard"
RECTIFICATION_DAYS: dict[str, int] = {
    "falling_tiles": 3,
    "blocked_fire_lane": 1,
    "basement_misuse": 10,
    "gas": 1,
    "electrical": 3,
    "other": 5,
}
RECTIFICATION_TIMER = "hazard_rectification"
# The timers of an incident that stop while it is paused and move by the time paused.
INCIDENT_TIMERS = (TIMER_KIND, RECTIFICATION_TIMER)


def rectification_due(hazard_category: str, start: datetime) -> datetime:
    return add_working_days(start, RECTIFICATION_DAYS.get(hazard_category, RECTIFICATION_DAYS["other"]))


def extended(category: str, due: datetime, days: int) -> datetime:
    """A time to resolve moved by `days`: calendar days for clock-hour categories, else working days."""
    rule = DEADLINES[category]
    return due + timedelta(days=days) if rule.unit == "hours" else add_working_days(due, days)
