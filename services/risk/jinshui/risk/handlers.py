"""Risk handlers: every event the rules listen to goes through the rule book; alerts go out through the outbox."""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.events import AlertRaised, Evidence
from jinshui.kit import scope, timers
from jinshui.risk import ledger, profiles, tasks, windows
from jinshui.risk.alerts import derived_id, raise_alert
from jinshui.risk.rules import RuleBook, lookup, render

log = logging.getLogger(__name__)


async def on_event(
    conn: asyncpg.Connection,
    event: CloudEvent,
    *,
    book: RuleBook,
    escalate_after: timedelta,
    letting_window: timedelta = timedelta(days=7),
) -> None:
    """Keep risk's copies and windows, then apply the effects of every rule whose conditions the event meets."""
    book.reload_if_changed()
    if event.type == scope.ASSIGNMENT_CHANGED:
        await scope.keep(conn, event)
    if event.type == tasks.VISIT:
        open_tasks, open_entries = await windows.keep_visit(conn, event)
        if open_tasks:
            await tasks.close_by_visit(conn, event)  # before the rules, so a visit never closes its own new task
        if open_entries:
            await ledger.follow_up(conn, event)
    if event.type in (TAG_SET, TAG_ENDED):
        await keep_tags(conn, event)
    if event.type == TAG_ENDED:
        await ledger.tag_ended(conn, event)
    if event.type in (windows.HOUSEHOLD_REGISTERED, windows.HOUSEHOLDS_IMPORTED):
        await windows.keep_households(conn, event)
    elif event.type == windows.COVERAGE_CHANGED:
        await windows.keep_coverage(conn, event)
    elif event.type == windows.LETTING_STOPPED:
        await windows.letting_stopped(conn, event, window=letting_window)
    elif event.type == windows.RESIDENT_DEPARTED:
        await windows.departed(conn, event)
    elif event.type == RESIDENT_ARRIVED:
        await ledger.moved(conn, event)
    await apply_rules(conn, event, book=book, escalate_after=escalate_after)


def on_timer(window, *, book: RuleBook, escalate_after: timedelta) -> timers.TimerHandler:
    """A timer of risk's own windows: the events it puts out go through the rules in the same transaction."""

    async def handler(conn: asyncpg.Connection, timer: timers.Timer, now) -> None:
        book.reload_if_changed()
        for event in await window(conn, timer, now):
            await apply_rules(conn, event, book=book, escalate_after=escalate_after)

    return handler


async def apply_rules(conn: asyncpg.Connection, event: CloudEvent, *, book: RuleBook, escalate_after: timedelta):
    for rule in book.matching(event.type, event.data):
        held, earlier = await _store_conditions(conn, rule, event)
        if not held:
            continue
        alert_id: str | None = None
        for effect in rule.effects:
            if effect.alert is not None:
                alert_id = await _alert(conn, rule, effect.alert, event, book, escalate_after, earlier)
            elif effect.ledger is not None:
                await ledger.open_entry(conn, rule=rule.id, effect=effect.ledger, event=event)
            elif effect.score is not None:
                explanation = f"{rule.description or rule.id} (rule {rule.id}, rules v{book.version})"
                await profiles.add(conn, rule=rule.id, effect=effect.score, event=event, explanation=explanation)
            else:
                t = effect.task
                grid, beat = lookup(event.data, t.grid), lookup(event.data, t.beat)
                if grid is None or beat is None:
                    log.warning("task not given: the event names no grid or beat", extra={"rule": rule.id})
                    continue
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


async def _alert(conn, rule, a, event: CloudEvent, book: RuleBook, escalate_after: timedelta, earlier) -> str | None:
    subject, grid, beat = (lookup(event.data, p) for p in (a.subject, a.grid, a.beat))
    if subject is None or grid is None or beat is None:
        # e.g. a source whose address did not resolve yet: nobody's beat to tell; the rule fires when it links.
        log.warning("alert not raised: the event names no subject, grid or beat", extra={"rule": rule.id})
        return None
    alert = AlertRaised(
        alert_id=derived_id(rule.id, event.id),
        rule=rule.id,
        level=a.level,
        household_code=lookup(event.data, a.household) if a.household else None,
        grid=grid,
        beat=beat,
        explanation=f"{render(a.explanation, event.data)} (rule {rule.id}, rules v{book.version})",
        evidence=[*earlier, Evidence(event_id=event.id, type=event.type, time=event.time)],
        raised_at=event.time,
    )
    return await raise_alert(conn, alert=alert, subject_key=str(subject), escalate_after=escalate_after)


TAG_SET = "org.jinshui.registry.tag.set.v1"
TAG_ENDED = "org.jinshui.registry.tag.ended.v1"
RESIDENT_ARRIVED = "org.jinshui.registry.resident.arrived.v1"


async def keep_tags(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """Risk's copy of person tags, by keyed ID hash: what rule 1 (a tagged person in a new incident) reads."""
    d = event.data
    await conn.execute(
        """INSERT INTO person_tags (tag_id, id_hash, tag, household_code, grid, beat, active, at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (tag_id) DO UPDATE SET active = $7, at = $8 WHERE person_tags.at <= $8""",
        d["tag_id"],
        d.get("id_hash"),
        d["tag"],
        d["household_code"],
        d["grid"],
        d["beat"],
        event.type == TAG_SET,
        event.time,
    )


async def _store_conditions(conn: asyncpg.Connection, rule, event: CloudEvent) -> tuple[bool, list[Evidence]]:
    """The conditions that read risk's own data: windows of earlier occurrences, tagged persons."""
    earlier: list[Evidence] = []
    for c in rule.when:
        if c.repeated is not None:
            key = lookup(event.data, c.repeated.key)
            if key is None:
                return False, []
            await conn.execute(
                "INSERT INTO rule_occurrences (rule, key, event_id, type, at) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT DO NOTHING",
                rule.id,
                str(key),
                event.id,
                event.type,
                event.time,
            )
            rows = await conn.fetch(
                """SELECT event_id, type, at FROM rule_occurrences
                   WHERE rule = $1 AND key = $2 AND at > $3 AND at <= $4 ORDER BY at, event_id""",
                rule.id,
                str(key),
                event.time - timedelta(days=c.repeated.within_days),
                event.time,
            )
            if len(rows) < c.repeated.at_least:
                return False, []
            earlier += [
                Evidence(event_id=r["event_id"], type=r["type"], time=r["at"])
                for r in rows
                if r["event_id"] != event.id
            ]
        elif c.involves_tagged is not None:
            hashes = lookup(event.data, c.involves_tagged.persons) or []
            tagged = await conn.fetchval(
                "SELECT count(*) FROM person_tags WHERE active AND id_hash = ANY($1::text[]) AND tag = ANY($2::text[])",
                [str(h) for h in hashes],
                c.involves_tagged.tags,
            )
            if not tagged:
                return False, []
    return True, earlier
