"""Risk HTTP API (behind the gateway): alerts and their commands, gates, watch-lists."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, model_validator

from jinshui.contracts import streams
from jinshui.contracts.base import AreaCode
from jinshui.contracts.envelope import new_event
from jinshui.contracts.risk import AlertLevel, KeyedHash, Plate, WatchEntryChanged, WatchKind, normalize_plate
from jinshui.kit import outbox, scope
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.problems import Problem
from jinshui.risk import alerts
from jinshui.risk.alerts import SOURCE, derived_id
from jinshui.risk.rules import RuleBook, RuleFileError

router = APIRouter(prefix="/v1")
ALERT_COLUMNS = (
    "id, rule, level, status, attention, household_code, grid, beat, explanation, evidence, raised_at,"
    " acknowledged_at, acknowledged_by, closed_at, closed_by, close_reason, escalated_at, updated_at"
)


@router.get("/alerts")
async def list_alerts(
    pool: PoolDep,
    caller: CallerDep,
    status: Annotated[list[Literal["raised", "acknowledged", "resolved", "dismissed"]] | None, Query()] = None,
    level: Annotated[list[AlertLevel] | None, Query()] = None,
    beat: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, description="keyset cursor: the `next` of the previous page"),
):
    cursor_at, cursor_id = None, None
    if before:
        at_text, _, cursor_id = before.partition("|")
        try:
            cursor_at = datetime.fromisoformat(at_text)
        except ValueError:
            raise Problem(400, "before is not a cursor this API gave", type="bad-cursor") from None
    in_scope, scope_params = scope.sql(await scope.scope_of(pool, caller), first_param=9)
    rows = await pool.fetch(
        f"""SELECT {ALERT_COLUMNS} FROM alerts
            WHERE ($1::text[] IS NULL OR status = ANY($1)) AND ($2::text[] IS NULL OR level = ANY($2))
              AND ($3::text IS NULL OR beat = $3) AND ($4::text IS NULL OR rule = $4)
              AND ($5::timestamptz IS NULL OR raised_at >= $5)
              AND ($6::timestamptz IS NULL OR (raised_at, id) < ($6, $7)) AND {in_scope}
            ORDER BY raised_at DESC, id DESC LIMIT $8""",
        status,
        [lv.value for lv in level] if level else None,
        beat,
        rule,
        since,
        cursor_at,
        cursor_id,
        limit,
        *scope_params,
    )
    items = [dict(r) for r in rows]
    nxt = f"{items[-1]['raised_at'].isoformat()}|{items[-1]['id']}" if len(items) == limit else None
    return {"alerts": items, "next": nxt}


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: str, pool: PoolDep, caller: CallerDep):
    row = await pool.fetchrow(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1", alert_id)
    if row is None or not scope.admits(await scope.scope_of(pool, caller), grid=row["grid"], beat=row["beat"]):
        raise Problem(404, f"no alert {alert_id}")
    history = await pool.fetch(
        "SELECT at, what, by, reason, evidence FROM alert_history WHERE alert_id = $1 ORDER BY at, what", alert_id
    )
    return {**dict(row), "history": [dict(h) for h in history]}


class AlertCommand(BaseModel):
    reason: str | None = Field(default=None, max_length=1000)


class ReasonRequired(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


async def _move(svc, pool, caller, alert_id: str, command: str, reason: str | None):
    await get_alert(alert_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        await alerts.move(conn, alert_id=alert_id, command=command, by=caller.sub, reason=reason, at=svc.clock.now())
    return await get_alert(alert_id, pool, caller)


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge(
    alert_id: str, svc: ServiceDep, pool: PoolDep, caller: CallerDep, body: AlertCommand | None = None
):
    return await _move(svc, pool, caller, alert_id, "acknowledge", body.reason if body else None)


@router.post("/alerts/{alert_id}/resolve")
async def resolve(alert_id: str, body: ReasonRequired, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    return await _move(svc, pool, caller, alert_id, "resolve", body.reason)


@router.post("/alerts/{alert_id}/dismiss")
async def dismiss(alert_id: str, body: ReasonRequired, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    return await _move(svc, pool, caller, alert_id, "dismiss", body.reason)


class NewGate(BaseModel):
    code: AreaCode
    name: str = Field(min_length=1, max_length=100)
    grid: AreaCode
    beat: AreaCode


@router.post("/gates", status_code=201)
async def add_gate(body: NewGate, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    inserted = await pool.fetchval(
        "INSERT INTO gates (code, name, grid, beat, created_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (code) DO NOTHING RETURNING code",
        body.code,
        body.name,
        body.grid,
        body.beat,
        svc.clock.now(),
    )
    if inserted is None:
        raise Problem(409, f"gate {body.code} exists already", type="duplicate")
    return body.model_dump()


@router.get("/gates")
async def list_gates(pool: PoolDep, caller: CallerDep):
    return {"gates": [dict(r) for r in await pool.fetch("SELECT code, name, grid, beat FROM gates ORDER BY code")]}


class NewWatchEntry(BaseModel):
    """A plate, or a person by keyed hash (the gateway turns an ID number into the hash and the mask)."""

    kind: WatchKind
    plate: Plate | None = None
    person_hash: KeyedHash | None = None
    masked: str | None = Field(default=None, max_length=32)
    level: AlertLevel
    reason: str = Field(min_length=1, max_length=500)
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _one_key(self) -> NewWatchEntry:
        if self.kind == WatchKind.plate and not self.plate:
            raise ValueError("a plate entry needs `plate`")
        if self.kind == WatchKind.person and not (self.person_hash and self.masked):
            raise ValueError("a person entry needs the person's ID number")
        return self


WATCH_COLUMNS = "id, kind, masked, level, reason, expires_at, created_by, created_at, removed_at, removed_by"


@router.post("/watchlists", status_code=201)
async def add_watch_entry(body: NewWatchEntry, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    now = svc.clock.now()
    if body.expires_at is not None and body.expires_at <= now:
        raise Problem(422, "expires_at is already past", errors=[{"field": "body.expires_at", "reason": "in the past"}])
    if body.kind == WatchKind.plate:
        key, masked = normalize_plate(body.plate), body.plate
    else:
        key, masked = body.person_hash, body.masked
    entry_id = derived_id("watch", body.kind.value, key, now.isoformat())
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO watch_entries
                    (id, kind, match_key, masked, level, reason, expires_at, created_by, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WATCH_COLUMNS}""",
            entry_id,
            body.kind.value,
            key,
            masked,
            body.level.value,
            body.reason,
            body.expires_at,
            caller.sub,
            now,
        )
        await _watch_event(conn, row, active=True, by=caller.sub, at=now)
    return dict(row)


@router.get("/watchlists")
async def list_watch_entries(pool: PoolDep, caller: CallerDep, include_removed: bool = False):
    rows = await pool.fetch(
        f"SELECT {WATCH_COLUMNS} FROM watch_entries WHERE ($1 OR removed_at IS NULL) ORDER BY created_at DESC",
        include_removed,
    )
    return {"entries": [dict(r) for r in rows]}


@router.delete("/watchlists/{entry_id}")
async def remove_watch_entry(entry_id: str, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    now = svc.clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE watch_entries SET removed_at = $2, removed_by = $3, version = nextval('watch_version')
                WHERE id = $1 AND removed_at IS NULL RETURNING {WATCH_COLUMNS}""",
            entry_id,
            now,
            caller.sub,
        )
        if row is None:
            raise Problem(404, f"no active watch-list entry {entry_id}")
        await _watch_event(conn, row, active=False, by=caller.sub, at=now)
    return dict(row)


async def _watch_event(conn, row, *, active: bool, by: str, at: datetime) -> None:
    data = WatchEntryChanged(
        entry_id=row["id"],
        kind=row["kind"],
        masked=row["masked"],
        level=row["level"],
        reason=row["reason"],
        expires_at=row["expires_at"],
        active=active,
        by=by,
        at=at,
    )
    event = new_event(
        id=derived_id("watch_entry.changed", row["id"], "added" if active else "removed"),
        type="org.jinshui.risk.watch_entry.changed.v1",
        source=SOURCE,
        subject=row["id"],
        time=at,
        data=data,
    )
    await outbox.add(conn, event=event, subject=streams.RISK_WATCH_ENTRY_CHANGED)


@router.get("/rules")
async def rules_in_force(svc: ServiceDep, caller: CallerDep):
    return svc.app.state.rules.describe()


@router.post("/rules/reload")
async def reload_rules(svc: ServiceDep, caller: CallerDep):
    """Load the rules file now; a file that fails validation is refused with where, and the old rules stay."""
    book: RuleBook = svc.app.state.rules
    try:
        book.reload()
    except RuleFileError as e:
        raise Problem(
            422, str(e), type="rules-refused", title="The rules file was refused", version_in_force=book.version
        ) from e
    except OSError as e:
        raise Problem(422, f"the rules file cannot be read: {e}", type="rules-refused") from e
    return book.describe()


TASK_COLUMNS = (
    "id, rule, title, household_code, grid, beat, assignee, alert_id, status, due_at, created_at, closed_at,"
    " closed_by_event, evidence"
)


@router.get("/tasks")
async def list_tasks(
    pool: PoolDep,
    caller: CallerDep,
    status: Literal["open", "done"] | None = "open",
    grid: str | None = None,
    limit: int = Query(100, ge=1, le=500),
):
    """A grid worker sees the tasks of their grids (and those given to them); others see all, by filter."""
    mine = caller.role == "grid_worker"
    in_scope, scope_params = scope.sql(None if mine else await scope.scope_of(pool, caller), first_param=6)
    rows = await pool.fetch(
        f"""SELECT {TASK_COLUMNS} FROM tasks t
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR grid = $2)
              AND (NOT $3 OR assignee = $4 OR grid IN (
                    SELECT area FROM scope_assignments WHERE person = $4 AND role = 'grid_worker' AND active))
              AND {in_scope}
            ORDER BY due_at, id LIMIT $5""",
        status,
        grid,
        mine,
        caller.sub,
        limit,
        *scope_params,
    )
    return {"tasks": [dict(r) for r in rows]}
