"""Sources in: police calls, grid reports and visit concerns, located, and correlated into joint incidents."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from jinshui.contracts.incidents import (
    IncidentOpened,
    IncidentStatus,
    MatchReason,
    PersonMention,
    SourceLinked,
    SourceRef,
)
from jinshui.incidents import addresses, copies, hazards, journal, rules
from jinshui.incidents.journal import derived_id
from jinshui.kit import timers


class Rejected(Exception):
    """This record cannot be applied; the reason goes into its outcome."""


class NotYetKnown(Exception):
    """A reference not yet in the local copy (it may be on its way)."""


@dataclass
class NewSource:
    origin: str  # police_call | report | visit
    external_id: str
    category: str  # the police category or the report kind
    occurred_at: datetime
    household_code: str | None = None
    address_text: str | None = None
    description: str = ""
    priority: int = 3
    hazard_category: str | None = None
    photos: list[str] = field(default_factory=list)
    persons: list[dict] = field(default_factory=list)
    submitted_by: str | None = None
    submission_id: str | None = None
    record_index: int | None = None
    grid: str | None = None
    beat: str | None = None
    rectification_deadline: datetime | None = None

    @property
    def id(self) -> str:
        return derived_id("source", self.origin, self.external_id)

    @property
    def kind(self) -> str:
        return rules.KIND_OF[self.category] if self.origin == "police_call" else rules.REPORT_KIND[self.category]

    @property
    def person_hashes(self) -> list[str]:
        return sorted({p["id_hash"] for p in self.persons if p.get("id_hash")})


def persons_of(mentions: list[PersonMention]) -> list[dict]:
    """Only the keyed hash and the masked form are kept; the ciphertext stays on the stream."""
    return [
        {
            "name": m.name,
            "role": m.role,
            "id_hash": m.id_number.hash if m.id_number else None,
            "id_masked": m.id_number.masked if m.id_number else None,
            "resolved": m.id_number is not None,
        }
        for m in mentions
    ]


@dataclass
class Located:
    household_code: str | None
    address_norm: str | None
    address_resolved: bool
    confidence: float | None
    grid: str | None
    beat: str | None
    address: str | None


async def locate(conn: asyncpg.Connection, src: NewSource) -> Located:
    """The household a source is about, from its code or its free-text address."""
    if src.household_code:
        row = await conn.fetchrow(
            """SELECT k.code, k.address, k.grid, k.beat FROM households h
               JOIN households k ON k.code = coalesce(h.merged_into, h.code) WHERE h.code = $1""",
            src.household_code,
        )
        if row is None:
            if src.grid:  # a registry event carries the household's grid and beat itself
                return Located(src.household_code, None, True, 1.0, src.grid, src.beat, None)
            raise NotYetKnown(f"household {src.household_code} is not registered")
        return Located(
            row["code"], addresses.normalize(row["address"]), True, 1.0, row["grid"], row["beat"], row["address"]
        )
    text = src.address_text or ""
    rows = [
        dict(r)
        for r in await conn.fetch(
            "SELECT code, address, grid, beat FROM households WHERE numbers_key = $1 AND merged_into IS NULL",
            addresses.numbers_key(text),
        )
    ]
    found = addresses.resolve(text, rows)
    if found.household_code is None:
        return Located(None, addresses.normalize(text), False, found.confidence, None, None, text)
    row = next(r for r in rows if r["code"] == found.household_code)
    return Located(
        row["code"],
        addresses.normalize(row["address"]),
        True,
        found.confidence,
        row["grid"],
        row["beat"],
        row["address"],
    )


def match(src: NewSource, where: Located, other: asyncpg.Record) -> MatchReason | None:
    """Why `other` (an earlier source) is the same trouble as `src`, or None. Different addresses never match."""
    fields: list[str] = []
    score = 0.0
    if where.household_code and other["household_code"]:
        if where.household_code != other["household_code"]:
            return None
        fields.append("household_code")
        score += 0.6
    elif where.address_norm and other["address_norm"]:
        if where.address_norm != other["address_norm"]:
            return None
        fields.append("address")
        score += 0.5
    if set(src.person_hashes) & set(other["person_hashes"] or ()):
        fields.append("persons")
        score += 0.45
    fields.append("category_group")
    if other["category"] == src.category and other["origin"] == src.origin:
        fields.append("category")
        score += 0.1
    window = rules.WINDOWS[src.kind]
    gap = abs((src.occurred_at - other["occurred_at"]).total_seconds())
    if gap > window.total_seconds():
        return None
    fields.append("time_window")
    score += 0.1 * (1 - gap / window.total_seconds())
    score = round(min(score, 1.0), 3)
    if score < rules.MATCH_THRESHOLD:
        return None
    return MatchReason(fields=fields, score=score, matched_source_id=other["id"])


async def correlate(conn: asyncpg.Connection, src: NewSource, where: Located) -> tuple[str, MatchReason] | None:
    """The open incident this source belongs to, with the reason, if any."""
    window = rules.WINDOWS[src.kind]
    candidates = await conn.fetch(
        """SELECT s.id, s.incident_id, s.origin, s.category, s.household_code, s.address_norm, s.person_hashes,
                  s.occurred_at
           FROM sources s JOIN incidents i ON i.id = s.incident_id
           WHERE s.kind = $1 AND i.status <> 'closed' AND i.merged_into IS NULL
             AND s.occurred_at BETWEEN $2 AND $3
             AND (s.household_code = $4 OR s.address_norm = $5 OR s.person_hashes && $6::text[])
           ORDER BY s.occurred_at, s.id""",
        src.kind,
        src.occurred_at - window,
        src.occurred_at + window,
        where.household_code,
        where.address_norm,
        src.person_hashes,
    )
    best: tuple[str, MatchReason] | None = None
    for other in candidates:
        reason = match(src, where, other)
        if reason is not None and (best is None or reason.score > best[1].score):
            best = (other["incident_id"], reason)
    return best


def ref(src: NewSource) -> SourceRef:
    return SourceRef(
        source_id=src.id,
        origin=src.origin,
        external_id=src.external_id,
        category=src.category,
        person_hashes=src.person_hashes,
    )


async def take_in(conn: asyncpg.Connection, src: NewSource, *, at: datetime) -> str:
    """Record a source and open or join its incident; returns the incident id. Rejected / NotYetKnown."""
    existing = await conn.fetchval(
        "SELECT incident_id FROM sources WHERE origin = $1 AND external_id = $2", src.origin, src.external_id
    )
    if existing is not None:
        what = {"police_call": "police call", "report": "report", "visit": "visit"}[src.origin]
        raise Rejected(f"{what} {src.external_id} was already received (incident {existing})")
    src.persons = await copies.canonical_persons(conn, src.persons)
    where = await locate(conn, src)
    lock = where.household_code or where.address_norm
    if lock:  # two sources at one place are correlated one after the other
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"incidents-place:{lock}")
    found = await correlate(conn, src, where)
    if found is None:
        incident_id = derived_id("incident", src.id)
        await open_incident(conn, incident_id=incident_id, src=src, where=where, at=at)
        reason = None
    else:
        incident_id, reason = found
    await insert_source(conn, src=src, where=where, incident_id=incident_id, reason=reason, at=at)
    if reason is not None:
        await conn.execute(
            """UPDATE incidents SET priority = LEAST(priority, $2), updated_at = GREATEST(updated_at, $3),
                   household_code = COALESCE(household_code, $4), grid = COALESCE(grid, $5),
                   beat = COALESCE(beat, $6), address = COALESCE(address, $7)
               WHERE id = $1""",
            incident_id,
            src.priority,
            at,
            where.household_code,
            where.grid,
            where.beat,
            where.address,
        )
        await journal.record(
            conn,
            incident_id=incident_id,
            verb="source_linked",
            data=SourceLinked(
                incident_id=incident_id,
                source=ref(src),
                reason=reason,
                at=at,
                household_code=where.household_code,
                grid=where.grid,
                beat=where.beat,
            ),
            at=at,
            actor=src.submitted_by or "system",
            event_id=derived_id("source_linked", incident_id, src.id),
        )
    return incident_id


async def insert_source(
    conn: asyncpg.Connection, *, src: NewSource, where: Located, incident_id: str, reason: MatchReason | None, at
) -> None:
    await conn.execute(
        """INSERT INTO sources (id, origin, external_id, category, kind, incident_id, household_code, address_text,
               address_norm, address_confidence, address_resolved, grid, beat, occurred_at, description, priority,
               hazard_category, photos, persons, person_hashes, submitted_by, submission_id, record_index, match,
               received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                   $22, $23, $24, $25)""",
        src.id,
        src.origin,
        src.external_id,
        src.category,
        src.kind,
        incident_id,
        where.household_code,
        src.address_text,
        where.address_norm,
        where.confidence,
        where.address_resolved,
        where.grid,
        where.beat,
        src.occurred_at,
        src.description,
        src.priority,
        src.hazard_category,
        src.photos,
        src.persons,
        src.person_hashes,
        src.submitted_by,
        src.submission_id,
        src.record_index,
        reason.model_dump(mode="json") if reason else None,
        at,
    )


async def open_incident(conn: asyncpg.Connection, *, incident_id: str, src: NewSource, where: Located, at) -> None:
    category = rules.category_key(src.origin, src.category)
    await conn.execute(
        """INSERT INTO incidents (id, category, kind, status, household_code, address, grid, beat, priority,
               opened_at, updated_at)
           VALUES ($1, $2, $3, 'reported', $4, $5, $6, $7, $8, $9, $10)""",
        incident_id,
        category,
        src.kind,
        where.household_code,
        where.address,
        where.grid,
        where.beat,
        src.priority,
        src.occurred_at,
        at,
    )
    await schedule(conn, incident_id=incident_id, category=category, start=src.occurred_at)
    opened = IncidentOpened(
        incident_id=incident_id,
        category=category,
        kind=src.kind,
        status=IncidentStatus.reported,
        household_code=where.household_code,
        address=where.address,
        grid=where.grid,
        beat=where.beat,
        priority=src.priority,
        source=ref(src),
        opened_at=src.occurred_at,
    )
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="opened",
        data=opened,
        at=at,
        actor=src.submitted_by or "system",
        event_id=derived_id("opened", incident_id),
    )
    if category == rules.HAZARD_CATEGORY:
        hazard_category = src.hazard_category or "other"
        given = src.rectification_deadline
        days = rules.RECTIFICATION_DAYS.get(hazard_category, rules.RECTIFICATION_DAYS["other"])
        await hazards.set_deadline(
            conn,
            row=await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id),
            hazard_category=hazard_category,
            deadline=given or rules.rectification_due(hazard_category, src.occurred_at),
            by=src.submitted_by or "system",
            reason="set by the reporter" if given else f"the default for {hazard_category}: {days} working days",
            at=at,
            event_id=derived_id("deadline_set", incident_id),
        )


async def schedule(
    conn: asyncpg.Connection,
    *,
    incident_id: str,
    category: str,
    start: datetime,
    only: tuple[str, ...] = rules.DEADLINE_NAMES,
) -> None:
    """Timers for the incident's deadlines (the kit's timer rows): "due soon" and "overdue", to accept and resolve."""
    for deadline, due in rules.deadlines(category, start).items():
        if deadline not in only:
            continue
        for stage, fire_at in (("due_soon", rules.due_soon_at(start, due)), ("overdue", due)):
            await timers.schedule(
                conn,
                kind=rules.TIMER_KIND,
                ref=rules.timer_ref(incident_id, deadline, stage),
                due_at=fire_at,
                payload={"incident_id": incident_id, "deadline": deadline, "stage": stage, "due_at": due.isoformat()},
            )
