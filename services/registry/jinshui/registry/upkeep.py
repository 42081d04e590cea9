"""Keeping the file right, synchronously (a person waits for each): corrections and voids of records entered by
mistake, deaths, person records found to be one, households split and merged. Each is one transaction: the change,
its events and its versions in the history, or nothing."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from jinshui.contracts.base import AreaCode, HouseholdCode
from jinshui.contracts.registry import (
    HouseholdsMerged,
    HouseholdSplit,
    HouseUse,
    PersonDied,
    PersonsMerged,
    RecordCorrected,
    RecordVoided,
    ResidencyKind,
    UnitCategory,
    VisitConcern,
)
from jinshui.kit import timers
from jinshui.kit.app import CallerDep, PoolDep, ServiceDep
from jinshui.kit.pii import PersonalDataError
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity
from jinshui.registry import codes, scope, tags
from jinshui.registry.api import KeyringDep, RegisterHousehold, _find_household, new_household
from jinshui.registry.areas import unprocessable
from jinshui.registry.handlers import EXPIRY, Rejected, Residencies, _household
from jinshui.registry.outbox import emit, history
from jinshui.registry.units import LICENCE

router = APIRouter(prefix="/v1")
ADMIN = "community_admin"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- corrections and voids -------------------------------------------------------------------------------------
class VisitChanges(Body):
    visited_at: AwareDatetime | None = None
    concerns: list[VisitConcern] | None = None
    people_present: int | None = Field(default=None, ge=0, le=100)
    follow_up_requested: bool | None = None
    note: str | None = Field(default=None, max_length=2000)


class ResidencyChanges(Body):
    kind: ResidencyKind | None = None
    arrived_at: AwareDatetime | None = None
    expected_end: AwareDatetime | None = None
    departed_at: AwareDatetime | None = None


class LettingChanges(Body):
    landlord: str | None = Field(default=None, min_length=1, max_length=64)
    starts_on: date | None = None
    expected_end: date | None = None


class TagChanges(Body):
    since: date | None = None
    until: date | None = None
    reason: str | None = Field(default=None, min_length=1, max_length=500)


class UnitChanges(Body):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    category: UnitCategory | None = None
    licence_number: str | None = Field(default=None, pattern=LICENCE)
    operator_name: str | None = Field(default=None, min_length=1, max_length=64)


class PersonChanges(Body):
    name: str | None = Field(default=None, min_length=1, max_length=64)
    birth_date: date | None = None
    sex: Literal["female", "male"] | None = None
    phone: str | None = Field(default=None, max_length=32)


# kind -> (table, what may change, what may not be emptied, how the author is found)
KINDS: dict[str, tuple[str, type[Body], set[str]]] = {
    "visit": ("visits", VisitChanges, {"visited_at", "concerns", "people_present", "follow_up_requested", "note"}),
    "residency": ("residencies", ResidencyChanges, {"kind", "arrived_at"}),
    "letting": ("lettings", LettingChanges, {"landlord", "starts_on"}),
    "tag": ("tags", TagChanges, {"since", "reason"}),
    "unit": ("units", UnitChanges, {"name", "category"}),
    "person": ("persons", PersonChanges, {"name"}),
}
Kind = Literal["visit", "residency", "letting", "tag", "unit", "person"]
VoidKind = Literal["visit", "residency", "letting", "tag", "unit"]
# Who entered a record: its first version in the history.
FIRST_ACTION = {
    "visit": "recorded",
    "residency": "arrived",
    "letting": "registered",
    "tag": "set",
    "unit": "registered",
}


class Correction(Body):
    kind: Kind
    id: str = Field(min_length=1, max_length=64)
    changes: dict[str, Any] = Field(description="the fields to change and their right values")
    reason: str = Field(min_length=1, max_length=500)


class Void(Body):
    kind: VoidKind
    id: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def _record(conn, kind: str, record_id: str) -> asyncpg.Record:
    table = KINDS[kind][0]
    row = await conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1 FOR UPDATE", record_id)
    if row is None:
        raise Problem(404, f"no {kind} {record_id}")
    if kind != "person" and row["voided_at"] is not None:
        raise Problem(409, f"the {kind} {record_id} was voided on {row['voided_at'].isoformat()}", type="conflict")
    return row


async def _where(conn, kind: str, row) -> asyncpg.Record | None:
    """The household a record belongs to (a person's: where they live now, or last lived)."""
    if kind == "person":
        code = await conn.fetchval(
            """SELECT household_code FROM residencies WHERE person_id = $1 AND voided_at IS NULL
               ORDER BY departed_at IS NULL DESC, arrived_at DESC LIMIT 1""",
            row["id"],
        )
    elif kind == "unit":
        code = row["household_code"] or await conn.fetchval(
            "SELECT code FROM households WHERE house_id = $1 ORDER BY code LIMIT 1", row["house_id"]
        )
    else:
        code = row["household_code"]
    return await conn.fetchrow("SELECT code, grid, beat FROM households WHERE code = $1", code) if code else None


async def _may_change(conn, caller: Identity, kind: str, row, household) -> None:
    """Its author or a community admin; others 403 (and 404 outside the caller's scope)."""
    if household is not None and not (await scope.of(conn, caller)).covers(
        grid=household["grid"], beat=household["beat"]
    ):
        raise Problem(404, f"no {kind} {row['id']} in your scope")
    if caller.role == ADMIN:
        return
    if kind == "unit":
        author = row["registered_by"]
    elif kind == "person":
        author = await conn.fetchval(
            """SELECT actor FROM history WHERE entity = 'residency' AND action = 'arrived'
               AND data->>'person_id' = $1 ORDER BY seq LIMIT 1""",
            row["id"],
        )
    else:
        author = await conn.fetchval(
            "SELECT actor FROM history WHERE entity = $1 AND entity_id = $2 AND action = $3",
            kind,
            row["id"],
            FIRST_ACTION[kind],
        )
    if author is None or author != caller.sub:
        raise Problem(403, f"only its author or a community admin may change this {kind}", type="forbidden")


def _changes(kind: str, changes: dict[str, Any]) -> dict[str, Any]:
    model, required = KINDS[kind][1], KINDS[kind][2]
    try:
        parsed = model.model_validate(changes)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(["body", "changes", *(str(p) for p in err["loc"])])
        raise unprocessable(field, err["msg"]) from None
    out = parsed.model_dump(exclude_unset=True)
    if not out:
        raise unprocessable("body.changes", f"nothing to change (a {kind} takes {', '.join(model.model_fields)})")
    for field, value in out.items():
        if value is None and field in required:
            raise unprocessable(f"body.changes.{field}", "may not be emptied")
    return out


def _consistent(kind: str, row, after: dict[str, Any], now: datetime) -> None:
    """The record as it would be after the correction holds together; else 422 naming the field."""
    merged = {**dict(row), **after}
    if kind == "visit" and merged["visited_at"] > now:
        raise unprocessable("body.changes.visited_at", "is in the future")
    if kind == "residency":
        if "departed_at" in after and row["departed_at"] is None:
            raise unprocessable("body.changes.departed_at", "the residency is open: submit a departure instead")
        if "departed_at" in after and after["departed_at"] is None:
            raise unprocessable("body.changes.departed_at", "may not be emptied: register an arrival instead")
        if merged["arrived_at"] > now:
            raise unprocessable("body.changes.arrived_at", "is in the future")
        if merged["departed_at"] is not None and merged["departed_at"] < merged["arrived_at"]:
            field = "departed_at" if "departed_at" in after else "arrived_at"
            raise unprocessable(f"body.changes.{field}", "the departure would be dated before the arrival")
        if merged["expected_end"] is not None and merged["expected_end"] <= merged["arrived_at"]:
            raise unprocessable("body.changes.expected_end", "is not after arrived_at")
    if kind == "letting":
        if merged["expected_end"] is not None and merged["expected_end"] <= merged["starts_on"]:
            raise unprocessable("body.changes.expected_end", "the letting would end before it starts")
        if merged["stopped_on"] is not None and merged["stopped_on"] < merged["starts_on"]:
            raise unprocessable("body.changes.starts_on", "is after the day the letting stopped")
    if kind == "tag":
        if merged["until"] is not None and merged["until"] < merged["since"]:
            raise unprocessable("body.changes.until", "is before since")
        if merged["ended_on"] is not None and merged["ended_on"] < merged["since"]:
            raise unprocessable("body.changes.since", "is after the day the tag ended")


@router.post("/corrections")
async def correct(body: Correction, pool: PoolDep, caller: CallerDep, svc: ServiceDep, keyring: KeyringDep):
    now = svc.clock.now()
    after = _changes(body.kind, body.changes)
    columns = dict(after)
    shown_after = {k: _plain(v) for k, v in after.items()}
    if body.kind == "person" and "phone" in after:
        phone = after["phone"]
        try:
            protected = keyring.protect("phone", phone, field="body.changes.phone") if phone else None
        except PersonalDataError as e:
            raise unprocessable(e.field, e.reason) from None
        columns["phone"] = protected.model_dump() if protected else None
        columns["phone_hash"] = protected.hash if protected else None
        shown_after.pop("phone")
        shown_after["phone_hash"] = columns["phone_hash"]
    correction_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        row = await _record(conn, body.kind, body.id)
        household = await _where(conn, body.kind, row)
        await _may_change(conn, caller, body.kind, row, household)
        _consistent(body.kind, row, after, now)
        before = {k: _plain(row[k]) for k in columns if k not in ("phone", "phone_hash")}
        if "phone_hash" in columns:
            before["phone_hash"] = row["phone_hash"]
        table = KINDS[body.kind][0]
        sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
        values = [v.value if hasattr(v, "value") else v for v in columns.values()]
        if body.kind == "visit" and "concerns" in columns:
            values[list(columns).index("concerns")] = [c.value for c in after["concerns"]]
        try:
            await conn.execute(f"UPDATE {table} SET {sets} WHERE id = $1", body.id, *values)
        except asyncpg.UniqueViolationError:
            raise Problem(409, f"another unit has licence {after.get('licence_number')}", type="duplicate") from None
        await _follow_timers(conn, body.kind, row, after)
        person_id = row["id"] if body.kind == "person" else _get(row, "person_id")
        data = RecordCorrected(
            correction_id=correction_id,
            kind=body.kind,
            record_id=body.id,
            household_code=household["code"] if household else None,
            grid=household["grid"] if household else None,
            beat=household["beat"] if household else None,
            person_id=person_id,
            before=before,
            after=shown_after,
            reason=body.reason,
            corrected_by=caller.sub,
            corrected_at=now,
        )
        await emit(conn, data, id=correction_id, key=household["code"] if household else None, time=now)
        if household is not None:
            await history(
                conn,
                household_code=household["code"],
                entity=body.kind,
                entity_id=f"{body.id}@{correction_id}",
                action="corrected",
                actor=caller.sub,
                at=now,
                data={"record_id": body.id, "before": before, "after": shown_after, "reason": body.reason},
            )
    return {
        "correction_id": correction_id,
        "kind": body.kind,
        "id": body.id,
        "before": before,
        "after": shown_after,
        "reason": body.reason,
    }


def _get(row, key: str):
    return row[key] if key in row.keys() else None


async def _follow_timers(conn, kind: str, row, after: dict[str, Any]) -> None:
    """A corrected expected end or `until` moves its timer."""
    if kind == "residency" and "expected_end" in after and row["departed_at"] is None:
        await conn.execute("UPDATE residencies SET expired_at = NULL WHERE id = $1", row["id"])
        if after["expected_end"] is None:
            await timers.cancel(conn, kind=EXPIRY, ref=row["id"])
        else:
            await timers.schedule(conn, kind=EXPIRY, ref=row["id"], due_at=after["expected_end"])
    if kind == "tag" and "until" in after and row["ended_on"] is None:
        if after["until"] is None:
            await timers.cancel(conn, kind=tags.UNTIL, ref=row["id"])
        else:
            await timers.schedule(conn, kind=tags.UNTIL, ref=row["id"], due_at=tags.end_of(after["until"]))


@router.post("/voids")
async def void(body: Void, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    void_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        row = await _record(conn, body.kind, body.id)
        household = await _where(conn, body.kind, row)
        await _may_change(conn, caller, body.kind, row, household)
        table = KINDS[body.kind][0]
        await conn.execute(f"UPDATE {table} SET voided_at = $2 WHERE id = $1", body.id, now)
        if body.kind == "residency" and row["departed_at"] is None:
            # No longer open: a voided stay never happened, so it closes where it began.
            await conn.execute(
                """UPDATE residencies SET departed_at = arrived_at, departure_reason = $2, departure_check = false
                   WHERE id = $1""",
                body.id,
                f"voided: {body.reason}",
            )
            await timers.cancel(conn, kind=EXPIRY, ref=body.id)
        if body.kind == "tag" and row["ended_on"] is None:  # risk's copy of open tags follows tag.ended
            await timers.cancel(conn, kind=tags.UNTIL, ref=body.id)
            await tags._end(
                conn, row, ended_on=row["since"], reason=f"voided: {body.reason}", by=caller.sub, sid=None, at=now
            )
        data = RecordVoided(
            void_id=void_id,
            kind=body.kind,
            record_id=body.id,
            household_code=household["code"] if household else None,
            grid=household["grid"] if household else None,
            beat=household["beat"] if household else None,
            person_id=_get(row, "person_id"),
            reason=body.reason,
            voided_by=caller.sub,
            voided_at=now,
        )
        await emit(conn, data, id=void_id, key=household["code"] if household else None, time=now)
        if household is not None:
            await history(
                conn,
                household_code=household["code"],
                entity=body.kind,
                entity_id=body.id,
                action="voided",
                actor=caller.sub,
                at=now,
                data={"reason": body.reason},
            )
    return {"void_id": void_id, "kind": body.kind, "id": body.id, "reason": body.reason, "voided_at": now}


# --- death -----------------------------------------------------------------------------------------------------
class Death(Body):
    died_on: date
    reason: str = Field(min_length=1, max_length=500)


@router.post("/persons/{person_id}/death")
async def record_death(person_id: str, body: Death, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    if body.died_on > now.astimezone(tags.SHANGHAI).date():
        raise unprocessable("body.died_on", "is in the future")
    death_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        person = await conn.fetchrow("SELECT * FROM persons WHERE id = $1 FOR UPDATE", person_id)
        if person is None:
            raise Problem(404, f"no person {person_id}")
        household = await _where(conn, "person", person)
        if household is not None and not (await scope.of(conn, caller)).covers(
            grid=household["grid"], beat=household["beat"]
        ):
            raise Problem(404, f"no person {person_id}")
        if person["merged_into"] is not None:
            raise Problem(409, f"person {person_id} was merged into {person['merged_into']}: record it there")
        if person["died_on"] is not None:
            raise Problem(409, f"the death of person {person_id} was already recorded ({person['died_on']})")
        at_death = datetime.combine(body.died_on, time(0), tzinfo=tags.SHANGHAI)
        stays = await conn.fetch(
            "SELECT * FROM residencies WHERE person_id = $1 AND departed_at IS NULL FOR UPDATE", person_id
        )
        r = Residencies.direct(actor=caller.sub, at=now, sid=death_id)
        closed = []
        for i, stay in enumerate(stays):
            if body.died_on < stay["arrived_at"].astimezone(tags.SHANGHAI).date():
                arrived = stay["arrived_at"].isoformat()
                raise unprocessable("body.died_on", f"is before the person's arrival ({arrived})")
            where = await _household(conn, stay["household_code"])
            await r._close(conn, where, person_id, max(at_death, stay["arrived_at"]), "death", i)
            closed.append(stay["id"])
        ended = []
        for tag in await conn.fetch(
            "SELECT * FROM tags WHERE person_id = $1 AND ended_on IS NULL FOR UPDATE", person_id
        ):
            await timers.cancel(conn, kind=tags.UNTIL, ref=tag["id"])
            await tags._end(
                conn, tag, ended_on=max(body.died_on, tag["since"]), reason="death", by=caller.sub, sid=None, at=now
            )
            ended.append(tag["id"])
        await conn.execute(
            "UPDATE persons SET died_on = $2, death_reason = $3 WHERE id = $1", person_id, body.died_on, body.reason
        )
        data = PersonDied(
            person_id=person_id,
            id_hash=person["id_hash"],
            died_on=body.died_on,
            reason=body.reason,
            residencies_closed=closed,
            recorded_by=caller.sub,
            recorded_at=now,
        )
        await emit(conn, data, id=death_id, key=household["code"] if household else None, time=now)
        if household is not None:
            await history(
                conn,
                household_code=household["code"],
                entity="person",
                entity_id=person_id,
                action="died",
                actor=caller.sub,
                at=now,
                data={"died_on": body.died_on.isoformat(), "reason": body.reason, "residencies_closed": closed},
            )
    return {"person_id": person_id, "died_on": body.died_on, "residencies_closed": closed, "tags_ended": ended}


# --- two person records found to be one ---------------------------------------------------------------------------
class PersonMerge(Body):
    keep: str = Field(min_length=1, max_length=64, description="the record that stays")
    merge: str = Field(min_length=1, max_length=64, description="the duplicate, which will point to `keep`")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/persons/merge")
async def merge_persons(body: PersonMerge, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    if body.keep == body.merge:
        raise unprocessable("body.merge", "is the same person as keep")
    merge_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT * FROM persons WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", [body.keep, body.merge]
            )
        }
        for field in ("keep", "merge"):
            pid = getattr(body, field)
            if pid not in rows:
                raise unprocessable(f"body.{field}", f"no person {pid}")
            if rows[pid]["merged_into"] is not None:
                raise Problem(409, f"person {pid} was already merged into {rows[pid]['merged_into']}", type="conflict")
        kept, dup = rows[body.keep], rows[body.merge]
        open_ = {
            r["person_id"]: r
            for r in await conn.fetch(
                "SELECT * FROM residencies WHERE person_id = ANY($1::text[]) AND departed_at IS NULL FOR UPDATE",
                [body.keep, body.merge],
            )
        }
        if body.keep in open_ and body.merge in open_:
            here, there = open_[body.keep]["household_code"], open_[body.merge]["household_code"]
            if here != there:
                raise Problem(
                    409,
                    f"both records are resident, in {here} and {there}: record the departure of one first",
                    type="conflict",
                )
            # The same stay entered twice: the duplicate's is void.
            await conn.execute(
                """UPDATE residencies SET voided_at = $2, departed_at = arrived_at, departure_reason = $3
                   WHERE id = $1""",
                open_[body.merge]["id"],
                now,
                f"merged into person {body.keep}",
            )
            await timers.cancel(conn, kind=EXPIRY, ref=open_[body.merge]["id"])
        for tag in await conn.fetch(
            """SELECT t.* FROM tags t WHERE t.person_id = $1 AND t.ended_on IS NULL AND EXISTS
               (SELECT 1 FROM tags k WHERE k.person_id = $2 AND k.tag = t.tag AND k.ended_on IS NULL)""",
            body.merge,
            body.keep,
        ):
            reason = f"merged into person {body.keep}"
            await timers.cancel(conn, kind=tags.UNTIL, ref=tag["id"])
            await tags._end(conn, tag, ended_on=tag["since"], reason=reason, by=caller.sub, sid=None, at=now)
        moved = await conn.fetch(
            "UPDATE residencies SET person_id = $1 WHERE person_id = $2 RETURNING id, household_code",
            body.keep,
            body.merge,
        )
        moved_tags = await conn.fetch(
            "UPDATE tags SET person_id = $1 WHERE person_id = $2 RETURNING id", body.keep, body.merge
        )
        lettings = await conn.fetch(
            """INSERT INTO letting_tenants (letting_id, person_id)
               SELECT letting_id, $1 FROM letting_tenants WHERE person_id = $2 ON CONFLICT DO NOTHING
               RETURNING letting_id""",
            body.keep,
            body.merge,
        )
        await conn.execute("DELETE FROM letting_tenants WHERE person_id = $1", body.merge)
        visits = await conn.fetch(
            """UPDATE visits SET persons_present = array_remove(persons_present, $2)
                   || CASE WHEN $1 = ANY(persons_present) THEN '{}'::text[] ELSE ARRAY[$1] END
               WHERE $2 = ANY(persons_present) RETURNING id""",
            body.keep,
            body.merge,
        )
        await conn.execute(
            """UPDATE persons k SET phone = coalesce(k.phone, m.phone),
                      phone_hash = coalesce(k.phone_hash, m.phone_hash),
                      birth_date = coalesce(k.birth_date, m.birth_date), sex = coalesce(k.sex, m.sex),
                      died_on = coalesce(k.died_on, m.died_on), death_reason = coalesce(k.death_reason, m.death_reason)
               FROM persons m WHERE k.id = $1 AND m.id = $2""",
            body.keep,
            body.merge,
        )
        await conn.execute("UPDATE persons SET merged_into = $1 WHERE id = $2", body.keep, body.merge)
        data = PersonsMerged(
            merge_id=merge_id,
            kept=body.keep,
            kept_id_hash=kept["id_hash"],
            merged=body.merge,
            merged_id_hash=dup["id_hash"],
            residencies=sorted(r["id"] for r in moved),
            tags=sorted(r["id"] for r in moved_tags),
            lettings=sorted(r["letting_id"] for r in lettings),
            visits=sorted(r["id"] for r in visits),
            reason=body.reason,
            merged_by=caller.sub,
            merged_at=now,
        )
        households = sorted(
            {r["household_code"] for r in moved}
            | {
                r["household_code"]
                for r in await conn.fetch("SELECT household_code FROM residencies WHERE person_id = $1", body.keep)
            }
        )
        await emit(conn, data, id=merge_id, key=households[0] if households else None, time=now)
        for code in households:  # both files keep the story: each household the two records lived in
            await history(
                conn,
                household_code=code,
                entity="person",
                entity_id=f"{body.merge}@{code}",
                action="merged",
                actor=caller.sub,
                at=now,
                data={"kept": body.keep, "merged": body.merge, "reason": body.reason, "merge_id": merge_id},
            )
    return {
        "merge_id": merge_id,
        "kept": body.keep,
        "merged": body.merge,
        "residencies": data.residencies,
        "tags": data.tags,
        "lettings": data.lettings,
        "visits": data.visits,
    }


# --- households: split (a grown child sets up their own) and merged (two records found to be one) ---------------
class Split(Body):
    persons: list[str] = Field(min_length=1, max_length=50, description="the members who set up the new household")
    address: str | None = Field(default=None, min_length=1, max_length=200, description="default: the same address")
    grid: AreaCode | None = Field(default=None, description="default: the same grid")
    building: str | None = Field(default=None, max_length=20)
    unit: str | None = Field(default=None, max_length=20)
    floor: str | None = Field(default=None, max_length=20)
    room: str | None = Field(default=None, max_length=20)
    house_use: HouseUse | None = None
    code: HouseholdCode | None = Field(default=None, description="the new household's code; else one is made")
    reason: str = Field(min_length=1, max_length=500)


class HouseholdMerge(Body):
    keep: HouseholdCode
    merge: HouseholdCode
    reason: str = Field(min_length=1, max_length=500)


async def _move_members(conn, r: Residencies, *, there, here, person_ids: list[str], now: datetime, why: str):
    """Close each member's stay in `there` and open it in `here` (kind and expected end kept), as one move."""
    for i, person_id in enumerate(person_ids):
        try:
            stay = await r._close(conn, there, person_id, now, why, i, r.sid)
        except Rejected as e:
            raise unprocessable(f"body.persons[{i}]", str(e)) from None
        await timers.cancel(conn, kind=EXPIRY, ref=stay["id"])
        expected_end = await conn.fetchval("SELECT expected_end FROM residencies WHERE id = $1", stay["id"])
        await r._open(
            conn,
            here,
            residency_id=str(uuid.uuid5(uuid.UUID(r.sid), person_id)),
            person_id=person_id,
            id_hash=stay["id_hash"],
            kind=ResidencyKind(stay["kind"]),
            arrived_at=now,
            expected_end=expected_end,
            index=i,
            move_id=r.sid,
        )


@router.post("/households/{code}/split", status_code=201)
async def split_household(code: str, body: Split, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    if len(set(body.persons)) != len(body.persons):
        raise unprocessable("body.persons", "names a person twice")
    split_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        row = await _find_household(conn, code, caller)
        if row["merged_into"] is not None:
            raise Problem(409, f"household {row['code']} was merged into {row['merged_into']}", type="conflict")
        house = RegisterHousehold(
            address=body.address or row["address"],
            grid=body.grid or row["grid"],
            beat=None if body.grid else row["beat"],
            building=body.building,
            unit=body.unit,
            floor=body.floor,
            room=body.room,
            house_use=body.house_use,
        )
        new_code = body.code or codes.new_code()
        try:
            async with conn.transaction():
                made = await new_household(conn, house, code=new_code, actor=caller.sub, now=now)
        except asyncpg.UniqueViolationError:
            raise Problem(409, f"household code {new_code} is already registered", type="duplicate") from None
        r = Residencies.direct(actor=caller.sub, at=now, sid=split_id)
        there, here = await _household(conn, row["code"]), await _household(conn, made.code)
        await _move_members(
            conn, r, there=there, here=here, person_ids=body.persons, now=now, why=f"split to {made.code}"
        )
        data = HouseholdSplit(
            split_id=split_id,
            from_household=row["code"],
            new_household=made.code,
            house_id=made.house_id,
            grid=made.grid,
            beat=made.beat,
            persons=body.persons,
            reason=body.reason,
            split_by=caller.sub,
            split_at=now,
        )
        await emit(conn, data, id=split_id, key=row["code"], time=now)
        for household in (row["code"], made.code):
            await history(
                conn,
                household_code=household,
                entity="household",
                entity_id=f"{split_id}@{household}",
                action="split",
                actor=caller.sub,
                at=now,
                data=data.model_dump(mode="json"),
            )
    return {
        "split_id": split_id,
        "from_household": row["code"],
        "household": made.model_dump(),
        "persons": body.persons,
    }


@router.post("/households/merge")
async def merge_households(body: HouseholdMerge, pool: PoolDep, caller: CallerDep, svc: ServiceDep):
    now = svc.clock.now()
    if body.keep == body.merge:
        raise unprocessable("body.merge", "is the same household as keep")
    merge_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        rows = {
            r["code"]: r
            for r in await conn.fetch(
                "SELECT * FROM households WHERE code = ANY($1::text[]) ORDER BY code FOR UPDATE",
                [body.keep, body.merge],
            )
        }
        for field in ("keep", "merge"):
            code = getattr(body, field)
            if code not in rows:
                raise unprocessable(f"body.{field}", f"household {code} is not registered")
            if rows[code]["merged_into"] is not None:
                raise Problem(
                    409, f"household {code} was already merged into {rows[code]['merged_into']}", type="conflict"
                )
        kept = rows[body.keep]
        members = [
            r["person_id"]
            for r in await conn.fetch(
                """SELECT person_id FROM residencies WHERE household_code = $1 AND departed_at IS NULL
                   ORDER BY arrived_at""",
                body.merge,
            )
        ]
        r = Residencies.direct(actor=caller.sub, at=now, sid=merge_id)
        there, here = await _household(conn, body.merge), await _household(conn, body.keep)
        await _move_members(
            conn, r, there=there, here=here, person_ids=members, now=now, why=f"merged into {body.keep}"
        )
        for tag in await conn.fetch(
            """SELECT t.* FROM tags t WHERE t.household_code = $1 AND t.person_id IS NULL AND t.ended_on IS NULL
               AND EXISTS (SELECT 1 FROM tags k WHERE k.household_code = $2 AND k.person_id IS NULL
                           AND k.tag = t.tag AND k.ended_on IS NULL)""",
            body.merge,
            body.keep,
        ):
            await timers.cancel(conn, kind=tags.UNTIL, ref=tag["id"])
            reason = f"merged into {body.keep}"
            await tags._end(conn, tag, ended_on=tag["since"], reason=reason, by=caller.sub, sid=None, at=now)
        moved_tags = await conn.fetch(
            "UPDATE tags SET household_code = $1 WHERE household_code = $2 AND ended_on IS NULL RETURNING id",
            body.keep,
            body.merge,
        )
        lettings = await conn.fetch(
            "UPDATE lettings SET household_code = $1 WHERE household_code = $2 AND stopped_on IS NULL RETURNING id",
            body.keep,
            body.merge,
        )
        await conn.execute("UPDATE units SET household_code = $1 WHERE household_code = $2", body.keep, body.merge)
        await conn.execute("UPDATE households SET merged_into = $1 WHERE code = $2", body.keep, body.merge)
        data = HouseholdsMerged(
            merge_id=merge_id,
            kept=body.keep,
            merged=body.merge,
            grid=kept["grid"],
            beat=kept["beat"],
            persons=members,
            tags=sorted(t["id"] for t in moved_tags),
            lettings=sorted(x["id"] for x in lettings),
            reason=body.reason,
            merged_by=caller.sub,
            merged_at=now,
        )
        await emit(conn, data, id=merge_id, key=body.keep, time=now)
        for code in (body.merge, body.keep):
            await history(
                conn,
                household_code=code,
                entity="household",
                entity_id=f"{merge_id}@{code}",
                action="merged",
                actor=caller.sub,
                at=now,
                data=data.model_dump(mode="json"),
            )
    return {
        "merge_id": merge_id,
        "kept": body.keep,
        "merged": body.merge,
        "persons": members,
        "tags": data.tags,
        "lettings": data.lettings,
    }
