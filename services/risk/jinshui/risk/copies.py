"""Risk's copies follow what the registry publishes besides single registrations: residents imported in bulk
(each taken as its own arrival), deaths, and persons or households found to be one (merged into the kept record).

A visit voided or re-dated changes the household's last visit (rule 7). A voided tag needs nothing here: the
registry ends an open tag it voids (tag.ended), which risk's tag copy follows. Other corrections change nothing
risk copies (a tag's dates and reason, a residency's kind and times, a person's name)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError

from jinshui.contracts.envelope import CloudEvent, new_event
from jinshui.contracts.registry import (
    HouseholdsMerged,
    PersonDied,
    PersonsMerged,
    ResidentsImported,
    VisitsRecorded,
    visit_recorded_id,
)
from jinshui.kit import timers
from jinshui.kit.consumer import Permanent
from jinshui.risk import ledger, tasks
from jinshui.risk.alerts import derived_id
from jinshui.risk.rules import RuleBook

RESIDENTS_IMPORTED = "org.jinshui.registry.resident.imported.v1"
RESIDENT_ARRIVED = "org.jinshui.registry.resident.arrived.v1"
PERSON_DIED = "org.jinshui.registry.person.died.v1"
PERSONS_MERGED = "org.jinshui.registry.person.merged.v1"
HOUSEHOLDS_MERGED = "org.jinshui.registry.household.merged.v1"
VISIT_RECORDED = tasks.VISIT
VISITS_RECORDED = (VISIT_RECORDED, "org.jinshui.registry.visit.recorded.v2")
VISITS_RECORDED_BATCH = "org.jinshui.registry.visits.recorded.v1"
RECORD_VOIDED = "org.jinshui.registry.record.voided.v1"
RECORD_CORRECTED = "org.jinshui.registry.record.corrected.v1"
REGISTRY_SOURCE = "/jinshui/registry"

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[asyncpg.Connection, CloudEvent], Awaitable[None]]


def following(on_event: Handler, *, book: RuleBook) -> Handler:
    """Risk's event handler, with the registry's bulk, death and merge events followed first."""

    async def handle(conn: asyncpg.Connection, event: CloudEvent) -> None:
        if event.type == RESIDENTS_IMPORTED:
            for arrival in await arrivals_that_matter(conn, event, book):
                await on_event(conn, arrival)
        elif event.type == PERSON_DIED:
            await person_died(conn, _parse(PersonDied, event), at=event.time)
        elif event.type == PERSONS_MERGED:
            await persons_merged(conn, _parse(PersonsMerged, event), at=event.time)
        elif event.type == HOUSEHOLDS_MERGED:
            await households_merged(conn, _parse(HouseholdsMerged, event))
        elif event.type == VISITS_RECORDED_BATCH:
            await take_visits(conn, [event], book, on_event)
            return
        elif event.type in VISITS_RECORDED:  # v1 and v2 carry one visit alike; kept once
            d = event.data
            await conn.execute(
                """INSERT INTO visits_seen (visit_id, household_code, visited_at) VALUES ($1, $2, $3)
                   ON CONFLICT (visit_id) DO NOTHING""",
                d["visit_id"],
                d["household_code"],
                datetime.fromisoformat(d["visited_at"]),
            )
        elif event.type in (RECORD_VOIDED, RECORD_CORRECTED) and event.data.get("kind") == "visit":
            await visit_changed(conn, event)
        await on_event(conn, event)

    return handle


def arrivals(event: CloudEvent) -> list[CloudEvent]:
    """An imported chunk as the resident.arrived events it stands for (ids derived from the chunk's), so that
    the ledger and the rules see an imported resident exactly as one registered on arrival."""
    chunk = _parse(ResidentsImported, event)
    return [
        new_event(
            id=derived_id("resident.imported", event.id, a.residency_id),
            type=RESIDENT_ARRIVED,
            source=REGISTRY_SOURCE,
            subject=a.household_code,
            time=event.time,
            data=a,
        )
        for a in chunk.arrivals
    ]


async def arrivals_that_matter(conn: asyncpg.Connection, event: CloudEvent, book: RuleBook) -> list[CloudEvent]:
    """Of an imported chunk's arrivals, those an arrival changes something for: a key person with an open ledger
    entry (it follows them), or a rule on arrivals. The others cost nothing, so a large import stays cheap."""
    every = arrivals(event)
    hashes = [a.data["id_hash"] for a in every]
    followed = {
        r["person_hash"]
        for r in await conn.fetch(
            "SELECT DISTINCT person_hash FROM ledger_entries WHERE status = 'open' AND person_hash = ANY($1::text[])",
            hashes,
        )
    }
    return [a for a in every if a.data["id_hash"] in followed or book.matching(a.type, a.data)]


def visits_together(on_event: Handler, *, book: RuleBook) -> Callable[[asyncpg.Connection, list], Awaitable[None]]:
    """The consumer's `together` for runs of visits.recorded events: all their visits taken in one go."""

    async def together(conn: asyncpg.Connection, events: list[CloudEvent]) -> None:
        await take_visits(conn, events, book, on_event)

    return together


async def take_visits(conn: asyncpg.Connection, events: list[CloudEvent], book: RuleBook, on_event: Handler) -> None:
    """Batches of visits (visits.recorded), each visit read as the visit.recorded event it stands for (with the id
    that event carries, so that an alert, a task or evidence is the same however the visit came).

    Set-based: every visit seen and every household's last visit in one statement each, and the open tasks the
    visits close (the first visit to a household closes them) in one more; a visit to a household with an open
    ledger entry follows it up. A household a rule matches one of the visits of is taken one visit at a time, in
    order, through `on_event`, as if each had come alone (its rules may open tasks that its later visits close).
    Most visits cost no more than their share of the three statements."""
    book.reload_if_changed()
    visits = [(event, v) for event in events for v in _parse(VisitsRecorded, event).visits]
    as_v1 = [v.as_v1().model_dump(mode="json") for _, v in visits]
    await conn.execute(
        """INSERT INTO visits_seen (visit_id, household_code, visited_at)
           SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) ON CONFLICT (visit_id) DO NOTHING""",
        [v.visit_id for _, v in visits],
        [v.household_code for _, v in visits],
        [v.visited_at for _, v in visits],
    )
    matched = zip(visits, as_v1, strict=True)
    ruled = {v.household_code for (_, v), data in matched if book.matching(VISIT_RECORDED, data)}
    latest: dict[str, datetime] = {}
    first_recorded: dict[str, datetime] = {}  # when the first visit to the household was recorded
    for event, v in visits:
        if v.household_code not in ruled:
            latest[v.household_code] = max(latest.get(v.household_code, v.visited_at), v.visited_at)
            first_recorded.setdefault(v.household_code, event.time)
    flags = await conn.fetch(
        """WITH v AS (SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(code, at, recorded)),
                kept AS (UPDATE households h SET last_visited_at = greatest(h.last_visited_at, v.at)
                         FROM v WHERE h.code = v.code)
           SELECT v.code,
                  EXISTS (SELECT 1 FROM tasks t WHERE t.household_code = v.code AND t.status = 'open'
                                                  AND t.created_at < v.recorded) AS tasks,
                  EXISTS (SELECT 1 FROM ledger_entries l WHERE l.household_code = v.code AND l.status = 'open'
                                                           AND l.opened_at <= v.at) AS ledger
           FROM v""",
        list(latest),
        list(latest.values()),
        [first_recorded[code] for code in latest],
    )
    tasked = {r["code"] for r in flags if r["tasks"]}
    followed = {r["code"] for r in flags if r["ledger"]}
    alone = [
        (
            v.household_code,
            new_event(
                id=visit_recorded_id(v.visit_id),
                type=VISIT_RECORDED,
                source=REGISTRY_SOURCE,
                subject=v.household_code,
                time=event.time,
                data=data,
            ),
        )
        for (event, v), data in zip(visits, as_v1, strict=True)
        if v.household_code in ruled or v.household_code in tasked or v.household_code in followed
    ]
    await tasks.close_by_visits(conn, [e for code, e in alone if code in tasked])
    for code, e in alone:
        if code in ruled:
            await on_event(conn, e)
        elif code in followed:
            await ledger.follow_up(conn, e)


async def visit_changed(conn: asyncpg.Connection, event: CloudEvent) -> None:
    """A visit voided, or corrected to another time: the household's last visit is what the other visits say."""
    d = event.data
    if event.type == RECORD_VOIDED:
        code = await conn.fetchval(
            "UPDATE visits_seen SET voided = true WHERE visit_id = $1 RETURNING household_code", d["record_id"]
        )
    elif "visited_at" in d.get("after", {}):
        code = await conn.fetchval(
            "UPDATE visits_seen SET visited_at = $2 WHERE visit_id = $1 RETURNING household_code",
            d["record_id"],
            datetime.fromisoformat(str(d["after"]["visited_at"])),
        )
    else:
        return
    if code is not None:
        await conn.execute(
            """UPDATE households SET last_visited_at =
                   (SELECT max(visited_at) FROM visits_seen WHERE household_code = $1 AND NOT voided)
               WHERE code = $1""",
            code,
        )


async def person_died(conn: asyncpg.Connection, d: PersonDied, *, at) -> None:
    """A dead person is followed up no more: their open ledger entries close (no review, so no task or alert of
    rule 6), and their tags stop counting."""
    await conn.execute("UPDATE person_tags SET active = false, at = $2 WHERE id_hash = $1 AND active", d.id_hash, at)
    rows = await conn.fetch(
        f"""UPDATE ledger_entries SET status = 'closed', closed_at = $2, next_review_at = NULL, updated_at = $2
            WHERE person_hash = $1 AND status = 'open' RETURNING {ledger.COLUMNS}""",
        d.id_hash,
        at,
    )
    reason = f"the person died on {d.died_on.isoformat()}: {d.reason}"
    for row in rows:
        await timers.cancel(conn, kind=ledger.REVIEW, ref=row["id"])
        await ledger._history(conn, row["id"], at, "closed", d.recorded_by, reason, None)
        await ledger._publish(conn, row, "closed", at, by=d.recorded_by, reason=reason)


async def persons_merged(conn: asyncpg.Connection, m: PersonsMerged, *, at) -> None:
    """The merged record's hash becomes the kept one's: its tags, ledger entries and score factors move over.
    Where both have an open entry of one rule, the kept person's stays and the merged one's closes into it."""
    if m.merged_id_hash == m.kept_id_hash:
        return
    await conn.execute("UPDATE person_tags SET id_hash = $2 WHERE id_hash = $1", m.merged_id_hash, m.kept_id_hash)
    await conn.execute(
        "UPDATE score_factors SET subject_key = $2 WHERE subject_kind = 'person' AND subject_key = $1",
        m.merged_id_hash,
        m.kept_id_hash,
    )
    reason = f"person {m.merged} merged into {m.kept}: {m.reason}"
    for entry in await conn.fetch(
        f"SELECT {ledger.COLUMNS} FROM ledger_entries WHERE person_hash = $1 ORDER BY opened_at, id", m.merged_id_hash
    ):
        kept = None
        if entry["status"] == "open":
            kept = await conn.fetchval(
                "SELECT id FROM ledger_entries WHERE rule = $1 AND person_hash = $2 AND status = 'open'",
                entry["rule"],
                m.kept_id_hash,
            )
        if kept is None:
            await conn.execute(
                "UPDATE ledger_entries SET person_hash = $2, updated_at = $3 WHERE id = $1",
                entry["id"],
                m.kept_id_hash,
                at,
            )
            await ledger._history(conn, entry["id"], at, "person_merged", m.merged_by, reason, None)
            continue
        row = await conn.fetchrow(
            f"""UPDATE ledger_entries SET person_hash = $2, status = 'closed', closed_at = $3, next_review_at = NULL,
                       updated_at = $3 WHERE id = $1 RETURNING {ledger.COLUMNS}""",
            entry["id"],
            m.kept_id_hash,
            at,
        )
        await timers.cancel(conn, kind=ledger.REVIEW, ref=entry["id"])
        into = f"{reason} (followed up in entry {kept})"
        await ledger._history(conn, entry["id"], at, "closed", m.merged_by, into, None)
        await ledger._history(conn, kept, at, "person_merged", m.merged_by, f"{reason} (entry {entry['id']})", None)
        await ledger._publish(conn, row, "closed", at, by=m.merged_by, reason=into)


async def households_merged(conn: asyncpg.Connection, m: HouseholdsMerged) -> None:
    """The merged code means the kept household: what risk keeps under it moves there, and the merged household
    leaves risk's copy (no monthly visit is asked for a record that is no more)."""
    await conn.execute(
        """UPDATE households k SET last_visited_at = greatest(k.last_visited_at, h.last_visited_at)
           FROM households h WHERE k.code = $2 AND h.code = $1""",
        m.merged,
        m.kept,
    )
    await conn.execute("DELETE FROM households WHERE code = $1", m.merged)
    await conn.execute("UPDATE visits_seen SET household_code = $2 WHERE household_code = $1", m.merged, m.kept)
    for table in ("person_tags", "ledger_entries", "alerts"):
        await conn.execute(
            f"UPDATE {table} SET household_code = $2, grid = $3, beat = $4 WHERE household_code = $1",
            m.merged,
            m.kept,
            m.grid,
            m.beat,
        )
    await conn.execute(
        "UPDATE tasks SET household_code = $2, grid = $3, beat = $4 WHERE household_code = $1 AND status = 'open'",
        m.merged,
        m.kept,
        m.grid,
        m.beat,
    )
    await conn.execute(
        "UPDATE score_factors SET subject_key = $2 WHERE subject_kind = 'household' AND subject_key = $1",
        m.merged,
        m.kept,
    )
    await conn.execute("UPDATE score_factors SET household_code = $2 WHERE household_code = $1", m.merged, m.kept)
    # Windowed rules keyed by the household count the merged one's occurrences as the kept one's.
    await conn.execute(
        """INSERT INTO rule_occurrences (rule, key, event_id, type, at)
           SELECT rule, $2, event_id, type, at FROM rule_occurrences WHERE key = $1 ON CONFLICT DO NOTHING""",
        m.merged,
        m.kept,
    )
    await conn.execute("DELETE FROM rule_occurrences WHERE key = $1", m.merged)


def _parse(model: type[M], event: CloudEvent) -> M:
    try:
        return model.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid {event.type}: {e.errors()[:3]}") from e
