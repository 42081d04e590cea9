"""Tasks for grid workers: created by rules, closed by the visit they ask for (and the loop closes itself)."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from jinshui.contracts import streams
from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.registry import VisitRecorded
from jinshui.contracts.risk import Evidence, TaskChanged
from jinshui.kit import outbox
from jinshui.risk import alerts
from jinshui.risk.alerts import SOURCE, derived_id

VISIT = "org.jinshui.registry.visit.recorded.v1"
COLUMNS = "id, rule, title, household_code, grid, beat, assignee, alert_id, due_at, evidence, status"


async def create(
    conn: asyncpg.Connection,
    *,
    rule: str,
    title: str,
    household_code: str | None,
    grid: str,
    beat: str,
    due_in: timedelta,
    alert_id: str | None,
    resolves_alert: bool,
    event: CloudEvent,
) -> None:
    evidence = [Evidence(event_id=event.id, type=event.type, time=event.time)]
    # The assignee is the grid's grid worker (looked up in the same statement).
    row = await conn.fetchrow(
        f"""INSERT INTO tasks (id, rule, title, household_code, grid, beat, assignee, alert_id, resolves_alert,
                              due_at, created_at, evidence)
            VALUES ($1, $2, $3, $4, $5, $6,
                    (SELECT person FROM scope_assignments WHERE area = $5 AND role = 'grid_worker' AND active
                     ORDER BY at LIMIT 1),
                    $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING
            RETURNING {COLUMNS}""",
        derived_id("task", rule, event.id),
        rule,
        title,
        household_code,
        grid,
        beat,
        alert_id,
        resolves_alert,
        event.time + due_in,
        event.time,
        [e.model_dump(mode="json") for e in evidence],
    )
    if row is not None:
        await _publish(conn, row, "created", event.time)


async def close_by_visit(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A visit to a household closes its open tasks, and resolves the alerts those tasks were set to resolve."""
    await close_by_visits(conn, [event])


async def close_by_visits(conn: asyncpg.Connection, visits: list[CloudEvent]) -> None:
    """Visits (visit.recorded v1 events) close their households' open tasks created before the visit was recorded,
    and resolve the alerts those tasks were set to resolve, in one statement; of several visits to a household,
    the first closes them (as it would have, taken one by one)."""
    first: dict[str, tuple[CloudEvent, VisitRecorded]] = {}
    for event in visits:
        visit = VisitRecorded.model_validate(event.data)
        first.setdefault(visit.household_code, (event, visit))
    if not first:
        return
    evidence = [[Evidence(event_id=e.id, type=e.type, time=e.time).model_dump(mode="json")] for e, _ in first.values()]
    rows = await conn.fetch(
        f"""UPDATE tasks SET status = 'done', closed_at = v_at, closed_by_event = v_event,
                   evidence = evidence || v_evidence
            FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::jsonb[]) AS v(v_code, v_event, v_at, v_evidence)
            WHERE household_code = v_code AND status = 'open' AND created_at < v_at
            RETURNING {COLUMNS}, resolves_alert, v_at""",
        list(first),
        [e.id for e, _ in first.values()],
        [e.time for e, _ in first.values()],
        evidence,
    )
    for row in rows:
        _, visit = first[row["household_code"]]
        await _publish(conn, row, "closed", row["v_at"])
        if row["resolves_alert"] and row["alert_id"]:
            status = await conn.fetchval("SELECT status FROM alerts WHERE id = $1", row["alert_id"])
            if status in alerts.OPEN:
                await alerts.move(
                    conn,
                    alert_id=row["alert_id"],
                    command="resolve",
                    by=visit.grid_worker,
                    reason=f"follow-up visit {visit.visit_id} recorded by {visit.grid_worker}",
                    at=row["v_at"],
                )


async def _publish(conn, row, verb: str, at: datetime) -> None:
    data = TaskChanged(
        task_id=row["id"],
        rule=row["rule"],
        title=row["title"],
        status=row["status"],
        household_code=row["household_code"],
        grid=row["grid"],
        beat=row["beat"],
        assignee=row["assignee"],
        alert_id=row["alert_id"],
        due_at=row["due_at"],
        evidence=row["evidence"],
        at=at,
    )
    event = new_event(
        id=derived_id("task", verb, row["id"]),
        type=f"org.jinshui.risk.task.{verb}.v1",
        source=SOURCE,
        subject=row["id"],
        time=at,
        data=data,
    )
    await outbox.add(conn, event=event, subject=streams.keyed(f"{streams.RISK_TASK}.{verb}", row["grid"]))
