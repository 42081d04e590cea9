"""Risk HTTP API (behind the gateway)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from jinshui.kit.app import CallerDep, PoolDep

router = APIRouter(prefix="/v1")


@router.get("/alerts")
async def list_alerts(pool: PoolDep, caller: CallerDep, beat: str | None = None, limit: int = Query(50, ge=1, le=500)):
    rows = await pool.fetch(
        "SELECT id, rule, level, household_code, grid, beat, explanation, evidence, status, raised_at"
        " FROM alerts WHERE ($1::text IS NULL OR beat = $1) ORDER BY raised_at DESC LIMIT $2",
        beat,
        limit,
    )
    return {"alerts": [dict(r) for r in rows]}
