"""Tags (标签化管理): set in the field and ended likewise (submitted through INTAKE), or ended when `until` passes.

A tag is on a person (and so, for its copies elsewhere, on the household they live in) or on a household. Its
events carry who, where and what, so that risk keeps its own copy from them alone.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.registry import TagEnd, TagEnded, TagEndsSubmitted, TagRecord, TagSet, TagsSubmitted
from jinshui.kit import timers
from jinshui.kit.timers import Timer
from jinshui.kit.tokens import Identity
from jinshui.registry.handlers import Rejected, _batch, _household, _per_record, _person_id, follow
from jinshui.registry.outbox import derived_id, emit, history

SHANGHAI = ZoneInfo("Asia/Shanghai")
UNTIL = "tag.until"
# Who sees the sensitive tags (mental illness, unstable person, community correction) on cards and person views.
SENSITIVE_READERS = ("police", "community_admin")


def sees_sensitive(caller: Identity) -> bool:
    return caller.role in SENSITIVE_READERS


def end_of(day: date) -> datetime:
    """The moment a tag whose `until` is `day` (inclusive, in Asia/Shanghai) ends."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=SHANGHAI)


class Tags:
    def __init__(self, *, event_: CloudEvent, batch) -> None:
        self.at, self.sid, self.actor = event_.time, batch.submission_id, batch.submitter.sub

    async def set(self, conn: asyncpg.Connection, record: TagRecord, index: int) -> str:
        kind = await conn.fetchrow("SELECT code, label, sensitive FROM tag_kinds WHERE code = $1", record.tag)
        if kind is None:
            raise Rejected(f"unknown tag {record.tag} (GET /v1/tag-kinds lists them)")
        person_id = id_hash = None
        if record.person is not None:
            person_id = await follow(conn, _person_id(record.person))
            stay = await conn.fetchrow(
                """SELECT r.household_code, p.id_hash FROM persons p
                   LEFT JOIN residencies r ON r.person_id = p.id AND r.departed_at IS NULL WHERE p.id = $1""",
                person_id,
            )
            if stay is None:
                raise Rejected("the person is not registered: register their arrival first")
            if stay["household_code"] is None:
                raise Rejected("the person is not resident in the community now")
            id_hash = stay["id_hash"]
            household = await _household(conn, stay["household_code"])
            open_ = await conn.fetchval(
                "SELECT since FROM tags WHERE tag = $1 AND person_id = $2 AND ended_on IS NULL", record.tag, person_id
            )
        else:
            household = await _household(conn, record.household_code)
            open_ = await conn.fetchval(
                """SELECT since FROM tags
                   WHERE tag = $1 AND household_code = $2 AND person_id IS NULL AND ended_on IS NULL""",
                record.tag,
                household["code"],
            )
        if open_ is not None:
            raise Rejected(f"already tagged {record.tag} since {open_.isoformat()}: end that tag first")
        tag_id = derived_id("tag", self.sid, str(index))
        await conn.execute(
            """INSERT INTO tags (id, tag, person_id, household_code, since, until, reason, set_by, set_at,
                                 submission_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            tag_id,
            record.tag,
            person_id,
            household["code"],
            record.since,
            record.until,
            record.reason,
            self.actor,
            self.at,
            self.sid,
        )
        if record.until is not None:
            await timers.schedule(conn, kind=UNTIL, ref=tag_id, due_at=end_of(record.until))
        data = TagSet(
            tag_id=tag_id,
            tag=record.tag,
            label=kind["label"],
            sensitive=kind["sensitive"],
            person_id=person_id,
            id_hash=id_hash,
            household_code=household["code"],
            house_id=household["house_id"],
            grid=household["grid"],
            beat=household["beat"],
            since=record.since,
            until=record.until,
            reason=record.reason,
            set_by=self.actor,
            submission_id=self.sid,
            record_index=index,
        )
        await emit(conn, data, id=derived_id("tag.set", tag_id), key=household["code"], time=self.at)
        await history(
            conn,
            household_code=household["code"],
            entity="tag",
            entity_id=tag_id,
            action="set",
            actor=self.actor,
            at=self.at,
            submission_id=self.sid,
            data={
                "tag": record.tag,
                "person_id": person_id,
                "since": record.since.isoformat(),
                "reason": record.reason,
            },
        )
        return tag_id

    async def end(self, conn: asyncpg.Connection, record: TagEnd, index: int) -> str:
        tag = await conn.fetchrow("SELECT * FROM tags WHERE id = $1 FOR UPDATE", record.tag_id)
        if tag is None:
            raise Rejected(f"no tag {record.tag_id}")
        if tag["ended_on"] is not None:
            raise Rejected(f"the tag already ended on {tag['ended_on'].isoformat()}")
        if record.ended_on < tag["since"]:
            raise Rejected(f"the tag cannot end before it began ({tag['since'].isoformat()})")
        await timers.cancel(conn, kind=UNTIL, ref=tag["id"])
        await _end(conn, tag, ended_on=record.ended_on, reason=record.reason, by=self.actor, sid=self.sid, at=self.at)
        return tag["id"]


async def _end(conn, tag: asyncpg.Record, *, ended_on: date, reason: str, by: str, sid: str | None, at: datetime):
    await conn.execute(
        "UPDATE tags SET ended_on = $2, end_reason = $3, ended_by = $4, end_submission = $5 WHERE id = $1",
        tag["id"],
        ended_on,
        reason,
        by,
        sid,
    )
    household = await _household(conn, tag["household_code"])
    sensitive = await conn.fetchval("SELECT sensitive FROM tag_kinds WHERE code = $1", tag["tag"])
    id_hash = None
    if tag["person_id"]:
        id_hash = await conn.fetchval("SELECT id_hash FROM persons WHERE id = $1", tag["person_id"])
    data = TagEnded(
        tag_id=tag["id"],
        tag=tag["tag"],
        sensitive=sensitive,
        person_id=tag["person_id"],
        id_hash=id_hash,
        household_code=household["code"],
        grid=household["grid"],
        beat=household["beat"],
        ended_on=ended_on,
        reason=reason,
        ended_by=by,
        submission_id=sid,
    )
    await emit(conn, data, id=derived_id("tag.ended", tag["id"]), key=household["code"], time=at)
    await history(
        conn,
        household_code=household["code"],
        entity="tag",
        entity_id=tag["id"],
        action="ended",
        actor=by,
        at=at,
        submission_id=sid,
        data={"tag": tag["tag"], "ended_on": ended_on.isoformat(), "reason": reason},
    )


async def until_passed(conn: asyncpg.Connection, timer: Timer, now: datetime) -> None:
    """A tag's `until` passed: it ends that day, by the registry."""
    tag = await conn.fetchrow("SELECT * FROM tags WHERE id = $1 FOR UPDATE", timer.ref)
    if tag is None or tag["ended_on"] is not None or tag["until"] is None:
        return
    await _end(conn, tag, ended_on=tag["until"], reason="until passed", by="registry", sid=None, at=timer.due_at)


async def record_tags(conn: asyncpg.Connection, event_: CloudEvent) -> None:
    batch = _batch(TagsSubmitted, event_)
    await _per_record(conn, batch.submission_id, batch.records, Tags(event_=event_, batch=batch).set, event_.time)


async def record_tag_ends(conn: asyncpg.Connection, event_: CloudEvent) -> None:
    batch = _batch(TagEndsSubmitted, event_)
    await _per_record(conn, batch.submission_id, batch.records, Tags(event_=event_, batch=batch).end, event_.time)


async def kinds(conn) -> list[dict]:
    rows = await conn.fetch("SELECT code, label, sensitive FROM tag_kinds ORDER BY sensitive, code")
    return [dict(r) for r in rows]


async def of_household(conn, code: str, *, sensitive: bool) -> list[dict]:
    """Open tags on the household and on its current residents (sensitive ones only when `sensitive`)."""
    rows = await conn.fetch(
        """SELECT t.id AS tag_id, t.tag, k.label, k.sensitive, t.person_id, t.since, t.until, t.reason, t.set_by
           FROM tags t JOIN tag_kinds k ON k.code = t.tag
           WHERE t.ended_on IS NULL AND ($2 OR NOT k.sensitive)
             AND ((t.person_id IS NULL AND t.household_code = $1)
                  OR t.person_id IN (SELECT person_id FROM residencies WHERE household_code = $1
                                     AND departed_at IS NULL))
           ORDER BY t.since, t.tag""",
        code,
        sensitive,
    )
    return [dict(r) for r in rows]


async def of_person(conn, person_id: str, *, sensitive: bool) -> list[dict]:
    """Every tag the person has had (open and ended), sensitive ones only when `sensitive`."""
    rows = await conn.fetch(
        """SELECT t.id AS tag_id, t.tag, k.label, k.sensitive, t.household_code, t.since, t.until, t.reason,
                  t.set_by, t.ended_on, t.end_reason
           FROM tags t JOIN tag_kinds k ON k.code = t.tag
           WHERE t.person_id = $1 AND ($2 OR NOT k.sensitive) AND t.voided_at IS NULL
           ORDER BY t.since DESC, t.tag""",
        person_id,
        sensitive,
    )
    return [dict(r) for r in rows]
