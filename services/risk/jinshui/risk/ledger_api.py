"""Risk HTTP API (behind the gateway): the close-out ledger and the risk profiles."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from jinshui.contracts.risk import SignerRole
from jinshui.kit import scope
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.problems import Problem
from jinshui.risk import ledger, profiles

router = APIRouter(prefix="/v1")
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text holds no NUL


def _known(value: str, what: str) -> str:
    if "\x00" in value:
        raise Problem(404, f"no {what} {value!r}")
    return value


LEDGER_COLUMNS = (
    "id, rule, person_hash, household_code, grid, beat, reason, interval_days, status, opened_at,"
    " last_follow_up_at, next_review_at, misses, closed_at, evidence, updated_at"
)


@router.get("/ledger")
async def list_ledger(
    svc: ServiceDep,
    pool: PoolDep,
    caller: CallerDep,
    status: Literal["open", "closed"] | None = None,
    rule: str | None = None,
    grid: str | None = None,
    beat: str | None = None,
    household_code: str | None = None,
    person_hash: str | None = None,
    overdue: bool = Query(False, description="only open entries whose review is past due"),
    limit: int = Query(100, ge=1, le=500),
):
    filters = {"rule": rule, "grid": grid, "beat": beat, "household_code": household_code, "person_hash": person_hash}
    bad = [{"field": f"query.{k}", "reason": "holds a NUL character"} for k, v in filters.items() if v and "\x00" in v]
    if bad:
        raise Problem(422, "a filter holds a NUL character", errors=bad)
    in_scope, params = scope.sql(await scope.scope_of(pool, caller), first_param=10)
    rows = await pool.fetch(
        f"""SELECT {LEDGER_COLUMNS} FROM ledger_entries
            WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR rule = $2)
              AND ($3::text IS NULL OR grid = $3) AND ($4::text IS NULL OR beat = $4)
              AND ($5::text IS NULL OR household_code = $5) AND ($6::text IS NULL OR person_hash = $6)
              AND (NOT $7 OR (status = 'open' AND next_review_at < $8)) AND {in_scope}
            ORDER BY opened_at DESC, id LIMIT $9""",
        status,
        rule,
        grid,
        beat,
        household_code,
        person_hash,
        overdue,
        svc.clock.now(),
        limit,
        *params,
    )
    return {"entries": [dict(r) for r in rows]}


@router.get("/ledger/{entry_id}")
async def get_entry(entry_id: str, pool: PoolDep, caller: CallerDep):
    _known(entry_id, "ledger entry")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE id = $1", entry_id)
        if row is None or not scope.admits(await scope.scope_of(conn, caller), grid=row["grid"], beat=row["beat"]):
            raise Problem(404, f"no ledger entry {entry_id}")
        history = await conn.fetch(
            "SELECT at, what, by, reason, evidence FROM ledger_history WHERE entry_id = $1 ORDER BY at, seq", entry_id
        )
        signatures = await conn.fetch(
            "SELECT role, by, reason, at FROM ledger_signatures WHERE entry_id = $1 ORDER BY at", entry_id
        )
    follow_ups = [dict(h) for h in history if h["what"] == "followed_up"]
    return {
        **dict(row),
        "follow_ups": follow_ups,
        "signatures": [dict(s) for s in signatures],
        "history": [dict(h) for h in history],
    }


class CloseSignature(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, pattern=NO_NUL)


@router.post("/ledger/{entry_id}/close")
async def close_entry(entry_id: str, body: CloseSignature, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    """One signature of the two that close (销号) an entry: the caller's, as police or community admin."""
    if caller.role not in {r.value for r in SignerRole}:
        raise Problem(403, "only a police user or a community admin signs a ledger entry off")
    await get_entry(entry_id, pool, caller)  # 404 outside the caller's scope
    async with pool.acquire() as conn, conn.transaction():
        await ledger.sign(
            conn,
            entry_id=entry_id,
            role=SignerRole(caller.role),
            by=caller.sub,
            reason=body.reason,
            at=svc.clock.now(),
        )
    return await get_entry(entry_id, pool, caller)


@router.get("/profiles/persons/{person_hash}")
async def person_profile(person_hash: str, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    _known(person_hash, "person")
    sc = await scope.scope_of(pool, caller)
    in_scope, params = scope.sql(sc, first_param=2)
    rows = await pool.fetch(
        f"""SELECT * FROM score_factors WHERE subject_kind = 'person' AND subject_key = $1 AND {in_scope}
            ORDER BY at, id""",
        person_hash,
        *params,
    )
    entries = await pool.fetch(
        f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE person_hash = $1 AND {in_scope} ORDER BY opened_at",
        person_hash,
        *params,
    )
    tags = await pool.fetch(
        f"""SELECT tag, household_code, grid, beat, active, at FROM person_tags WHERE id_hash = $1 AND {in_scope}
            ORDER BY at""",
        person_hash,
        *params,
    )
    if not rows and not entries and not tags:
        raise Problem(404, "risk knows nothing of this person (or nothing in your scope)")
    return {
        "person_hash": person_hash,
        **profiles.summarize(rows, svc.clock.now()),
        "tags": [dict(t) for t in tags],
        "ledger": [dict(e) for e in entries],
    }


@router.get("/profiles/households/{code}")
async def household_profile(code: str, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    _known(code, "household")
    household = await pool.fetchrow(
        "SELECT code, address, grid, beat, last_visited_at FROM households WHERE code = $1", code
    )
    if household is None or not scope.admits(
        await scope.scope_of(pool, caller), grid=household["grid"], beat=household["beat"]
    ):
        raise Problem(404, f"no household {code} known to risk")
    rows = await pool.fetch(
        "SELECT * FROM score_factors WHERE subject_kind = 'household' AND subject_key = $1 ORDER BY at, id", code
    )
    alerts = await pool.fetch(
        """SELECT id, rule, level, status, raised_at FROM alerts WHERE household_code = $1
           ORDER BY raised_at DESC LIMIT 50""",
        code,
    )
    open_tasks = await pool.fetch(
        "SELECT id, rule, title, due_at FROM tasks WHERE household_code = $1 AND status = 'open' ORDER BY due_at", code
    )
    return {
        **dict(household),
        **profiles.summarize(rows, svc.clock.now()),
        "alerts": [dict(a) for a in alerts],
        "open_tasks": [dict(t) for t in open_tasks],
    }


@router.get("/profiles/addresses/{address}")
async def address_profile(address: str, svc: ServiceDep, pool: PoolDep, caller: CallerDep):
    """The households at an address, or under it (a building, `金水小区3-2`, holds `金水小区3-2-501`): their scores
    summed, factors and history together."""
    _known(address, "address")
    in_scope, params = scope.sql(await scope.scope_of(pool, caller), first_param=2)
    pattern = address.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    households = await pool.fetch(
        f"""SELECT code, address, grid, beat FROM households WHERE address LIKE $1 AND {in_scope}
            ORDER BY address, code LIMIT 500""",
        pattern,
        *params,
    )
    if not households:
        raise Problem(404, f"no household at or under {address!r} known to risk (or none in your scope)")
    rows = await pool.fetch(
        """SELECT * FROM score_factors WHERE subject_kind = 'household' AND subject_key = ANY($1::text[])
           ORDER BY at, id""",
        [h["code"] for h in households],
    )
    now = svc.clock.now()
    per_household = {h["code"]: 0.0 for h in households}
    for r in rows:
        per_household[r["subject_key"]] += profiles.decayed(r["points"], r["half_life_days"], r["at"], now)
    return {
        "address": address,
        **profiles.summarize(rows, now),
        "households": [
            {
                **dict(h),
                "score": round(per_household[h["code"]], 3),
                "level": profiles.level_of(per_household[h["code"]]),
            }
            for h in households
        ],
    }
