"""Risk's own windows, timed by rows in PostgreSQL: the tenants of a stopped letting still resident after the
window (rule 3), the households not yet visited by the month's last week (rule 7). Each window that elapses
puts out an event of risk's own, which goes through the rules like any other (they say what follows)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.registry import (
    CoverageChanged,
    HouseholdRegistered,
    HouseholdsImported,
    LettingStopped,
    ResidentDeparted,
    VisitRecorded,
)
from jinshui.contracts.risk import DepartureUnconfirmed, VisitOverdue
from jinshui.kit import outbox, timers
from jinshui.risk.alerts import SOURCE, derived_id

LOCAL = ZoneInfo("Asia/Shanghai")
LETTING = "letting-departure"
MONTHLY = "monthly-visits"
HOUSEHOLD_REGISTERED = "org.jinshui.registry.household.registered.v1"
HOUSEHOLDS_IMPORTED = "org.jinshui.registry.household.imported.v1"
COVERAGE_CHANGED = "org.jinshui.registry.coverage.changed.v1"
LETTING_STOPPED = "org.jinshui.registry.letting.stopped.v1"
RESIDENT_DEPARTED = "org.jinshui.registry.resident.departed.v1"
DEPARTURE_UNCONFIRMED = "org.jinshui.risk.letting.departure_unconfirmed.v1"
VISIT_OVERDUE = "org.jinshui.risk.household.visit_overdue.v1"


async def keep_households(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """Risk's copy of the households (code, address, grid, beat), from REGISTRY."""
    if event.type == HOUSEHOLD_REGISTERED:
        households = [HouseholdRegistered.model_validate(event.data)]
    else:
        households = HouseholdsImported.model_validate(event.data).households
    await conn.executemany(
        """INSERT INTO households (code, address, grid, beat, registered_at) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (code) DO UPDATE SET address = $2, grid = $3, beat = $4""",
        [(h.code, h.address, h.grid, h.beat, h.registered_at) for h in households],
    )


async def keep_coverage(conn: asyncpg.Connection, event: CloudEvent) -> None:
    change = CoverageChanged.model_validate(event.data)
    await conn.execute("UPDATE households SET beat = $1 WHERE grid = ANY($2::text[])", change.beat, change.grids)


async def keep_visit(conn: asyncpg.Connection, event: CloudEvent) -> tuple[bool, bool]:
    """Note the household's last visit; and, in the same round trip, whether it has open tasks (that the visit
    closes) or open ledger entries (that it follows up). Most visits have neither: one query is all they cost."""
    visit = VisitRecorded.model_validate(event.data)
    row = await conn.fetchrow(
        """WITH kept AS (UPDATE households SET last_visited_at = greatest(last_visited_at, $2) WHERE code = $1)
           SELECT EXISTS (SELECT 1 FROM tasks WHERE household_code = $1 AND status = 'open' AND created_at < $3)
                      AS tasks,
                  EXISTS (SELECT 1 FROM ledger_entries WHERE household_code = $1 AND status = 'open'
                                                         AND opened_at <= $2) AS ledger""",
        visit.household_code,
        visit.visited_at,
        event.time,
    )
    return row["tasks"], row["ledger"]


# Rule 3, the letting half: 租有登记，停有核销 — the tenants of a stopped letting should have left.


async def letting_stopped(conn: asyncpg.Connection, event: CloudEvent, *, window: timedelta) -> None:
    stop = LettingStopped.model_validate(event.data)
    if not stop.departure_checks:
        return
    await conn.executemany(
        "INSERT INTO letting_checks (letting_id, person_id, household_code) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(stop.letting_id, p, stop.household_code) for p in stop.departure_checks],
    )
    stopped = datetime.combine(stop.stopped_on, time(), LOCAL)
    payload = {"event_id": event.id, "window_days": window.total_seconds() / 86400, **stop.model_dump(mode="json")}
    await timers.schedule(conn, kind=LETTING, ref=stop.letting_id, due_at=stopped + window, payload=payload)


async def departed(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A tenant's departure clears their check; the last one cancels the letting's timer."""
    d = ResidentDeparted.model_validate(event.data)
    lettings = await conn.fetch(
        """UPDATE letting_checks SET departed_at = $3
           WHERE person_id = $1 AND household_code = $2 AND departed_at IS NULL RETURNING letting_id""",
        d.person_id,
        d.household_code,
        d.departed_at,
    )
    for r in lettings:
        remaining = await conn.fetchval(
            "SELECT count(*) FROM letting_checks WHERE letting_id = $1 AND departed_at IS NULL", r["letting_id"]
        )
        if remaining == 0:
            await timers.cancel(conn, kind=LETTING, ref=r["letting_id"])


async def letting_window_elapsed(conn: asyncpg.Connection, timer: timers.Timer, now: datetime) -> list[CloudEvent]:
    remaining = await conn.fetchval(
        "SELECT count(*) FROM letting_checks WHERE letting_id = $1 AND departed_at IS NULL", timer.ref
    )
    if not remaining:
        return []
    p = timer.payload
    data = DepartureUnconfirmed(
        letting_id=timer.ref,
        household_code=p["household_code"],
        grid=p["grid"],
        beat=p["beat"],
        stopped_on=p["stopped_on"],
        still_resident=remaining,
        window_days=p["window_days"],
        letting_stopped_event=p["event_id"],
    )
    event = new_event(
        id=derived_id("departure_unconfirmed", timer.ref, timer.due_at.isoformat()),
        type=DEPARTURE_UNCONFIRMED,
        source=SOURCE,
        subject=timer.ref,
        time=timer.due_at,
        data=data,
    )
    await outbox.add(
        conn, event=event, subject=streams.keyed(f"{streams.RISK_LETTING}.departure_unconfirmed", data.grid)
    )
    return [event]


# Rule 7: every household is visited every month; by the month's last week the unvisited ones are due.


def month_of(at: datetime) -> str:
    return at.astimezone(LOCAL).strftime("%Y-%m")


def _first_day(month: str) -> date:
    y, m = (int(x) for x in month.split("-"))
    return date(y, m, 1)


def _next_month(month: str) -> str:
    first = _first_day(month)
    return (first.replace(day=28) + timedelta(days=4)).strftime("%Y-%m")


def last_week_starts(month: str) -> datetime:
    """The start (Asia/Shanghai midnight) of the month's last seven days."""
    nxt = _first_day(_next_month(month))
    return datetime.combine(nxt - timedelta(days=7), time(), LOCAL)


async def arm_monthly(conn: asyncpg.Connection, now: datetime) -> None:
    """At start: the current month's check, unless a check is armed already (it re-arms itself month by month)."""
    month = month_of(now)
    await conn.execute(
        """INSERT INTO timers (kind, ref, due_at) SELECT $1, $2, $3
           WHERE NOT EXISTS (SELECT 1 FROM timers WHERE kind = $1 AND fired_at IS NULL)
           ON CONFLICT (kind, ref) DO NOTHING""",
        MONTHLY,
        month,
        last_week_starts(month),
    )


async def month_check(conn: asyncpg.Connection, timer: timers.Timer, now: datetime) -> list[CloudEvent]:
    month = timer.ref
    starts = datetime.combine(_first_day(month), time(), LOCAL)
    rows = await conn.fetch(
        """SELECT code, grid, beat, last_visited_at FROM households
           WHERE last_visited_at IS NULL OR last_visited_at < $1 ORDER BY code""",
        starts,
    )
    events = []
    for r in rows:
        data = VisitOverdue(
            household_code=r["code"],
            grid=r["grid"],
            beat=r["beat"],
            month=month,
            last_visited_at=r["last_visited_at"],
        )
        events.append(
            new_event(
                id=derived_id("visit_overdue", r["code"], month),
                type=VISIT_OVERDUE,
                source=SOURCE,
                subject=r["code"],
                time=timer.due_at,
                data=data,
            )
        )
    await outbox.add_many(
        conn, [(e, streams.keyed(f"{streams.RISK_HOUSEHOLD}.visit_overdue", e.data["grid"])) for e in events]
    )
    nxt = _next_month(month)
    await timers.schedule(conn, kind=MONTHLY, ref=nxt, due_at=last_week_starts(nxt))
    return events
