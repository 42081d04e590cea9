"""Alerts: raised (or evidence appended to the open one), acknowledged, resolved or dismissed, escalated."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg

from jinshui.contracts import streams
from jinshui.contracts.envelope import new_event
from jinshui.contracts.risk import AlertChanged, AlertLevel, AlertRaised, AlertStatus, Evidence
from jinshui.kit import outbox, timers
from jinshui.kit.problems import Problem

SOURCE = "/jinshui/risk"
NS = uuid.UUID("0b7f3c52-5d0e-4b8e-8d55-2a0c6f4f8e21")
ESCALATION = "alert-escalation"
OPEN = (AlertStatus.raised.value, AlertStatus.acknowledged.value)
MOVES: dict[str, dict[str, str]] = {
    # command -> {from status: to status}
    "acknowledge": {"raised": "acknowledged"},
    "resolve": {"raised": "resolved", "acknowledged": "resolved"},
    "dismiss": {"raised": "dismissed", "acknowledged": "dismissed"},
}


def derived_id(*parts: str) -> str:
    """Ids derived from the input's ids, so that replaying the streams rebuilds the same state."""
    return str(uuid.uuid5(NS, ":".join(parts)))


async def raise_alert(
    conn: asyncpg.Connection,
    *,
    alert: AlertRaised,
    subject_key: str,
    escalate_after: timedelta | None,
) -> str:
    """Raise `alert`, or append its evidence to the open alert of the same rule and subject; returns its id."""
    inserted = await conn.fetchval(
        """INSERT INTO alerts (id, rule, level, household_code, grid, beat, explanation, evidence, raised_at,
                               subject_key, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9) ON CONFLICT DO NOTHING RETURNING id""",
        alert.alert_id,
        alert.rule,
        alert.level.value,
        alert.household_code,
        alert.grid,
        alert.beat,
        alert.explanation,
        [e.model_dump(mode="json") for e in alert.evidence],
        alert.raised_at,
        subject_key,
    )
    if inserted:
        await _history(conn, alert.alert_id, alert.raised_at, "raised", None, None, alert.evidence)
        await _publish(conn, "raised", alert.alert_id, alert.beat, alert.raised_at, alert)
        if escalate_after is not None and alert.level == AlertLevel.HIGH:
            await timers.schedule(conn, kind=ESCALATION, ref=alert.alert_id, due_at=alert.raised_at + escalate_after)
        return alert.alert_id
    if await conn.fetchval("SELECT 1 FROM alerts WHERE id = $1", alert.alert_id):
        return alert.alert_id  # this very alert was raised before (a replay)
    open_id = await conn.fetchval(
        "SELECT id FROM alerts WHERE rule = $1 AND subject_key = $2 AND status = ANY($3::text[])",
        alert.rule,
        subject_key,
        list(OPEN),
    )
    row = await conn.fetchrow(
        """UPDATE alerts SET evidence = evidence || $2::jsonb, updated_at = $3 WHERE id = $1
           RETURNING id, rule, level, status, grid, beat, attention""",
        open_id,
        [e.model_dump(mode="json") for e in alert.evidence],
        alert.raised_at,
    )
    await _history(conn, open_id, alert.raised_at, "evidence_added", None, None, alert.evidence)
    await _changed(conn, row, "evidence_added", at=alert.raised_at, evidence=alert.evidence)
    return open_id


async def move(conn: asyncpg.Connection, *, alert_id: str, command: str, by: str, reason: str | None, at: datetime):
    """Acknowledge, resolve or dismiss; 409 with the moves allowed when the alert is not in a state for it."""
    row = await conn.fetchrow(
        "SELECT id, rule, level, status, grid, beat, attention FROM alerts WHERE id = $1 FOR UPDATE", alert_id
    )
    if row is None:
        raise Problem(404, f"no alert {alert_id}")
    target = MOVES[command].get(row["status"])
    if target is None:
        allowed = [c for c, moves in MOVES.items() if row["status"] in moves]
        raise Problem(
            409,
            f"the alert is {row['status']}; it cannot be {command}d"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " any more"),
            type="illegal-transition",
            status_now=row["status"],
            allowed=allowed,
        )
    if target == "acknowledged":
        row = await conn.fetchrow(
            """UPDATE alerts SET status = $2, acknowledged_at = $3, acknowledged_by = $4, updated_at = $3
               WHERE id = $1 RETURNING id, rule, level, status, grid, beat, attention""",
            alert_id,
            target,
            at,
            by,
        )
    else:
        row = await conn.fetchrow(
            """UPDATE alerts SET status = $2, closed_at = $3, closed_by = $4, close_reason = $5, updated_at = $3
               WHERE id = $1 RETURNING id, rule, level, status, grid, beat, attention""",
            alert_id,
            target,
            at,
            by,
            reason,
        )
    await timers.cancel(conn, kind=ESCALATION, ref=alert_id)
    await _history(conn, alert_id, at, target, by, reason, None)
    await _changed(conn, row, target, at=at, by=by, reason=reason)
    return row


async def escalate(conn: asyncpg.Connection, timer, now: datetime) -> None:
    """A HIGH alert nobody acknowledged in time: attention rises and the desk is told again."""
    row = await conn.fetchrow(
        """UPDATE alerts SET attention = attention + 1, escalated_at = $2, updated_at = $2
           WHERE id = $1 AND status = 'raised' RETURNING id, rule, level, status, grid, beat, attention""",
        timer.ref,
        timer.due_at,
    )
    if row is None:
        return
    reason = "not acknowledged in time"
    await _history(conn, row["id"], timer.due_at, "escalated", None, reason, None)
    await _changed(conn, row, "escalated", at=timer.due_at, reason=reason)


async def _history(conn, alert_id, at, what, by, reason, evidence: list[Evidence] | None) -> None:
    await conn.execute(
        "INSERT INTO alert_history (alert_id, at, what, by, reason, evidence) VALUES ($1, $2, $3, $4, $5, $6)",
        alert_id,
        at,
        what,
        by,
        reason,
        [e.model_dump(mode="json") for e in evidence] if evidence else None,
    )


async def _changed(conn, row, verb: str, *, at: datetime, by=None, reason=None, evidence=None) -> None:
    change = AlertChanged(
        alert_id=row["id"],
        rule=row["rule"],
        level=row["level"],
        status=row["status"],
        grid=row["grid"],
        beat=row["beat"],
        by=by,
        reason=reason,
        attention=row["attention"],
        evidence=evidence or [],
        at=at,
    )
    await _publish(conn, verb, row["id"], row["beat"], at, change)


async def _publish(conn, verb: str, alert_id: str, beat: str, at: datetime, data) -> None:
    n = await conn.fetchval("SELECT count(*) FROM alert_history WHERE alert_id = $1", alert_id)
    event = new_event(
        id=derived_id("alert", verb, alert_id, str(n)),
        type=f"org.jinshui.risk.alert.{verb}.v1",
        source=SOURCE,
        subject=alert_id,
        time=at,
        data=data,
    )
    await outbox.add(conn, event=event, subject=streams.keyed(f"{streams.RISK_ALERT}.{verb}", beat))
