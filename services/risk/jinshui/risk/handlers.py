"""Risk handlers: every event the rules listen to goes through the rule book; alerts go out through the outbox."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import AlertRaised, Evidence
from jinshui.kit.consumer import Permanent
from jinshui.risk import tasks
from jinshui.risk.alerts import derived_id, raise_alert
from jinshui.risk.rules import RuleBook, lookup, render


async def on_event(conn: asyncpg.Connection, event: CloudEvent, *, book: RuleBook, escalate_after: timedelta) -> None:
    """Apply the effects of every rule in force whose conditions the event meets."""
    book.reload_if_changed()
    if event.type == tasks.ASSIGNMENT:
        await tasks.keep_assignments(conn, event)
    if event.type == tasks.VISIT:
        await tasks.close_by_visit(conn, event)  # before the rules, so a visit never closes its own new task
    for rule in book.matching(event.type, event.data):
        alert_id: str | None = None
        for effect in rule.effects:
            if effect.alert is not None:
                alert_id = await _alert(conn, rule, effect.alert, event, book, escalate_after)
            else:
                t = effect.task
                grid, beat = lookup(event.data, t.grid), lookup(event.data, t.beat)
                if grid is None or beat is None:
                    raise Permanent(f"rule {rule.id}: the event has no {t.grid} or {t.beat}")
                await tasks.create(
                    conn,
                    rule=rule.id,
                    title=render(t.title, event.data),
                    household_code=lookup(event.data, t.household),
                    grid=grid,
                    beat=beat,
                    due_in=timedelta(days=t.due_in_days),
                    alert_id=alert_id,
                    resolves_alert=t.resolves_alert,
                    event=event,
                )


async def _alert(conn, rule, a, event: CloudEvent, book: RuleBook, escalate_after: timedelta) -> str:
    subject, grid, beat = (lookup(event.data, p) for p in (a.subject, a.grid, a.beat))
    if subject is None or grid is None or beat is None:
        raise Permanent(f"rule {rule.id}: the event has no {a.subject}, {a.grid} or {a.beat}")
    alert = AlertRaised(
        alert_id=derived_id(rule.id, event.id),
        rule=rule.id,
        level=a.level,
        household_code=lookup(event.data, a.household) if a.household else None,
        grid=grid,
        beat=beat,
        explanation=f"{render(a.explanation, event.data)} (rule {rule.id}, rules v{book.version})",
        evidence=[Evidence(event_id=event.id, type=event.type, time=event.time)],
        raised_at=event.time,
    )
    return await raise_alert(conn, alert=alert, subject_key=str(subject), escalate_after=escalate_after)
