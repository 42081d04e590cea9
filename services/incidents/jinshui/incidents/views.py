"""Reads: the incident list (keyset pagination), one incident whole, unresolved sources, statistics."""

from __future__ import annotations

import base64
from datetime import datetime

import asyncpg
import orjson

from jinshui.incidents import rules
from jinshui.kit.problems import Problem
from jinshui.kit.scope import Scope

LIST_COLUMNS = """i.id, i.category, i.kind, i.status, i.household_code, i.address, i.grid, i.beat, i.priority,
    i.opened_at, i.updated_at, i.closed_at, i.assignee, i.overdue, i.satisfied, i.satisfaction_score,
    (SELECT count(*) FROM sources s WHERE s.incident_id = i.id) AS sources,
    (SELECT array_agg(DISTINCT s.origin ORDER BY s.origin) FROM sources s WHERE s.incident_id = i.id) AS origins"""


def _incident(row: asyncpg.Record) -> dict:
    out = dict(row)
    origins = out.pop("origins", None) or []
    out["joint"] = "police_call" in origins and len(origins) > 1
    out["origins"] = origins
    return out


def encode_cursor(opened_at: datetime, incident_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([opened_at.isoformat(), incident_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        opened_at, incident_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(opened_at), str(incident_id)
    except Exception:
        raise Problem(
            400, "cursor is not one this API gave out", errors=[{"field": "cursor", "reason": "not a valid cursor"}]
        ) from None


async def list_incidents(
    pool: asyncpg.Pool,
    *,
    status: list[str] | None,
    category: str | None,
    kind: str | None,
    grid: str | None,
    beat: str | None,
    household_code: str | None,
    opened_from: datetime | None,
    opened_to: datetime | None,
    overdue: bool | None,
    limit: int,
    cursor: str | None,
    scope: Scope | None = None,
) -> dict:
    where, args = ["i.merged_into IS NULL"], []

    def arg(value) -> str:
        args.append(value)
        return f"${len(args)}"

    if scope is not None:
        where.append(f"(i.grid = ANY({arg(scope.grids)}::text[]) OR i.beat = ANY({arg(scope.beats)}::text[]))")

    if status:
        where.append(f"i.status = ANY({arg(status)}::text[])")
    for column, value in (
        ("category", category),
        ("kind", kind),
        ("grid", grid),
        ("beat", beat),
        ("household_code", household_code),
    ):
        if value is not None:
            where.append(f"i.{column} = {arg(value)}")
    if opened_from is not None:
        where.append(f"i.opened_at >= {arg(opened_from)}")
    if opened_to is not None:
        where.append(f"i.opened_at < {arg(opened_to)}")
    if overdue is not None:
        where.append(f"i.overdue = {arg(overdue)}")
    if cursor:
        at, last_id = decode_cursor(cursor)
        where.append(f"(i.opened_at, i.id) < ({arg(at)}, {arg(last_id)})")
    rows = await pool.fetch(
        f"SELECT {LIST_COLUMNS} FROM incidents i WHERE {' AND '.join(where)}"
        f" ORDER BY i.opened_at DESC, i.id DESC LIMIT {arg(limit + 1)}",
        *args,
    )
    items = [_incident(r) for r in rows[:limit]]
    more = len(rows) > limit
    return {
        "items": items,
        "next_cursor": encode_cursor(rows[limit - 1]["opened_at"], rows[limit - 1]["id"]) if more else None,
    }


def _source(row: asyncpg.Record) -> dict:
    out = dict(row)
    out.pop("person_hashes", None)
    out["persons"] = [{k: v for k, v in p.items() if k != "id_hash"} for p in out["persons"]]
    return out


async def incident(pool: asyncpg.Pool, incident_id: str) -> dict:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(f"SELECT {LIST_COLUMNS}, i.merged_into FROM incidents i WHERE i.id = $1", incident_id)
        if row is None:
            raise Problem(404, f"no incident {incident_id}")
        if row["merged_into"]:
            raise Problem(
                404, f"incident {incident_id} was merged into {row['merged_into']}", merged_into=row["merged_into"]
            )
        out = _incident(row)
        out.pop("merged_into", None)
        out["sources"] = [
            _source(r)
            for r in await conn.fetch(
                """SELECT id, origin, external_id, category, kind, household_code, address_text, address_resolved,
                          address_confidence, grid, beat, occurred_at, description, priority, hazard_category, photos,
                          persons, submitted_by, match, received_at
                   FROM sources WHERE incident_id = $1 ORDER BY occurred_at, id""",
                incident_id,
            )
        ]
        out["timeline"] = [
            dict(r)
            for r in await conn.fetch(
                "SELECT seq, at, what, actor, detail FROM timeline WHERE incident_id = $1 ORDER BY seq", incident_id
            )
        ]
        out["mediations"] = [
            dict(r)
            for r in await conn.fetch(
                """SELECT id, mediators, method, held_at, outcome, agreement, notes, recorded_by, recorded_at
                   FROM mediations WHERE incident_id = $1 ORDER BY held_at, id""",
                incident_id,
            )
        ]
        extra = await conn.fetchrow(
            """SELECT hazard_category, rectify_by, rectified_at, rectification_overdue, paused_at, paused_waiting_on,
                      paused_timers, paused_seconds
               FROM incidents WHERE id = $1""",
            incident_id,
        )
        out["hazard"] = (
            {
                "category": extra["hazard_category"],
                "rectify_by": extra["rectify_by"],
                "rectified_at": extra["rectified_at"],
                "overdue": extra["rectification_overdue"],
            }
            if extra["rectify_by"] is not None or extra["hazard_category"] is not None
            else None
        )
        out["paused"] = (
            {
                "since": extra["paused_at"],
                "waiting_on": extra["paused_waiting_on"],
                "deadlines": [
                    {k: t["payload"].get(k) for k in ("deadline", "stage", "due_at")}
                    for t in extra["paused_timers"] or []
                ],
            }
            if extra["paused_at"] is not None
            else None
        )
        out["paused_seconds"] = extra["paused_seconds"]
        out["inspections"] = [
            dict(r)
            for r in await conn.fetch(
                """SELECT id, result, note, inspected_at, new_deadline, inspected_by, role, recorded_at
                   FROM inspections WHERE incident_id = $1 ORDER BY recorded_at, id""",
                incident_id,
            )
        ]
        out["extensions"] = [
            dict(r)
            for r in await conn.fetch(
                """SELECT id, days, reason, status, requested_by, requested_at, decided_by, decided_at,
                          decision_reason, resolve_due_before, resolve_due_after
                   FROM extensions WHERE incident_id = $1 ORDER BY requested_at, id""",
                incident_id,
            )
        ]
        out["follow_ups"] = [
            dict(r)
            for r in await conn.fetch(
                """SELECT id, visited_by, visited_at, note, still_settled, recorded_by, recorded_at
                   FROM follow_ups WHERE incident_id = $1 ORDER BY visited_at, id""",
                incident_id,
            )
        ]
        out["deadlines"] = [
            dict(r)
            for r in await conn.fetch(
                """SELECT payload->>'deadline' AS deadline, payload->>'stage' AS stage,
                          (payload->>'due_at')::timestamptz AS due_at, due_at AS fire_at, fired_at
                   FROM timers WHERE kind = $1 AND payload->>'incident_id' = $2 ORDER BY due_at, ref""",
                rules.TIMER_KIND,
                incident_id,
            )
        ]
    return out


async def unresolved_sources(pool: asyncpg.Pool, *, limit: int) -> list[dict]:
    rows = await pool.fetch(
        """SELECT id, origin, external_id, category, incident_id, address_text, address_confidence, occurred_at,
                  received_at
           FROM sources WHERE NOT address_resolved ORDER BY received_at, id LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]


GROUPS = {
    "category": "i.category",
    "grid": "COALESCE(i.grid, '')",
    "beat": "COALESCE(i.beat, '')",
    "kind": "i.kind",
    "month": "to_char(i.opened_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM')",
}


async def stats(pool: asyncpg.Pool, *, by: str, opened_from: datetime | None, opened_to: datetime | None) -> dict:
    """Closure rate, satisfaction rate and time to close, overall and per group."""
    key = GROUPS[by]
    rows = await pool.fetch(
        f"""SELECT GROUPING({key}) AS total_row, {key} AS key,
                   count(*) AS incidents,
                   count(*) FILTER (WHERE i.status = 'closed') AS closed,
                   count(i.satisfied) FILTER (WHERE i.status = 'closed') AS rated,
                   count(*) FILTER (WHERE i.status = 'closed' AND i.satisfied) AS satisfied,
                   avg(EXTRACT(EPOCH FROM i.closed_at - i.opened_at) / 3600)
                       FILTER (WHERE i.status = 'closed') AS hours_to_close,
                   count(*) FILTER (WHERE i.overdue) AS overdue
            FROM incidents i
            WHERE i.merged_into IS NULL
              AND ($1::timestamptz IS NULL OR i.opened_at >= $1) AND ($2::timestamptz IS NULL OR i.opened_at < $2)
            GROUP BY ROLLUP ({key}) ORDER BY 1, 2""",
        opened_from,
        opened_to,
    )

    def figures(r) -> dict:
        return {
            "incidents": r["incidents"],
            "closed": r["closed"],
            "closure_rate": round(r["closed"] / r["incidents"], 4) if r["incidents"] else None,
            "rated": r["rated"],
            "satisfied": r["satisfied"],
            "satisfaction_rate": round(r["satisfied"] / r["rated"], 4) if r["rated"] else None,
            "mean_hours_to_close": round(float(r["hours_to_close"]), 2) if r["hours_to_close"] is not None else None,
            "overdue": r["overdue"],
        }

    total = next(
        (figures(r) for r in rows if r["total_row"]),
        figures({"incidents": 0, "closed": 0, "rated": 0, "satisfied": 0, "hours_to_close": None, "overdue": 0}),
    )
    return {"by": by, "total": total, "groups": [{by: r["key"], **figures(r)} for r in rows if not r["total_row"]]}
