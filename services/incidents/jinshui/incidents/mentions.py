"""Persons named only by name (unresolved mentions): listed for a person to link, and linked by hand to an ID
number's keyed hash, which the gateway sealed at the door."""

from __future__ import annotations

import base64
from datetime import datetime

import asyncpg
import orjson

from jinshui.contracts.incidents import PersonLinked, ProtectedValue, SourceRef
from jinshui.incidents import copies, journal
from jinshui.incidents.journal import derived_id
from jinshui.kit.problems import Problem
from jinshui.kit.scope import Scope
from jinshui.kit.tokens import Identity


def _encode(received_at: datetime, source_id: str, index: int) -> str:
    raw = orjson.dumps([received_at.isoformat(), source_id, index])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str, int]:
    try:
        at, source_id, index = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(source_id), int(index)
    except Exception:
        raise Problem(
            400, "cursor is not one this API gave out", errors=[{"field": "cursor", "reason": "not a valid cursor"}]
        ) from None


async def unresolved(pool: asyncpg.Pool, *, scope: Scope | None, limit: int, cursor: str | None) -> dict:
    """Name-only mentions, oldest first, with their incident, source and household or address."""
    where, args = ["NOT coalesce((p.person->>'resolved')::boolean, false)", "i.merged_into IS NULL"], []

    def arg(value) -> str:
        args.append(value)
        return f"${len(args)}"

    if scope is not None:
        where.append(f"(i.grid = ANY({arg(scope.grids)}::text[]) OR i.beat = ANY({arg(scope.beats)}::text[]))")
    if cursor:
        at, source_id, index = _decode(cursor)
        where.append(f"(s.received_at, s.id, p.ord - 1) > ({arg(at)}, {arg(source_id)}, {arg(index)})")
    rows = await pool.fetch(
        f"""SELECT s.incident_id, s.id AS source_id, (p.ord - 1)::int AS index, p.person->>'name' AS name,
                   p.person->>'role' AS role, s.origin, s.external_id, s.category, s.occurred_at, s.received_at,
                   s.household_code, coalesce(i.address, s.address_text) AS address, s.address_resolved,
                   i.status, i.grid, i.beat
            FROM sources s JOIN incidents i ON i.id = s.incident_id
            CROSS JOIN LATERAL jsonb_array_elements(s.persons) WITH ORDINALITY AS p(person, ord)
            WHERE {" AND ".join(where)}
            ORDER BY s.received_at, s.id, p.ord LIMIT {arg(limit + 1)}""",
        *args,
    )
    items = [dict(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": items,
        "next_cursor": _encode(last["received_at"], last["source_id"], last["index"]) if last else None,
    }


async def link(
    conn: asyncpg.Connection,
    *,
    incident: asyncpg.Record,
    source_id: str,
    index: int,
    id_number: ProtectedValue,
    reason: str,
    caller: Identity,
    at: datetime,
) -> dict:
    """Give a name-only mention the keyed hash of its ID number; the source matches by it from now on."""
    incident_id = incident["id"]
    src = await conn.fetchrow(
        "SELECT * FROM sources WHERE id = $1 AND incident_id = $2 FOR UPDATE", source_id, incident_id
    )
    if src is None:
        raise Problem(404, f"incident {incident_id} has no source {source_id}")
    persons = list(src["persons"])
    if not 0 <= index < len(persons):
        raise Problem(
            422,
            f"source {source_id} names {len(persons)} person(s): no person {index}",
            errors=[{"field": "path.index", "reason": f"out of range (0..{len(persons) - 1})"}],
        )
    if persons[index].get("resolved"):
        raise Problem(
            409,
            f"person {index} of source {source_id} is already identified by an ID number",
            type="already-resolved",
            errors=[{"field": "path.index", "reason": "already resolved"}],
        )
    [canonical] = await copies.canonical_persons(conn, [{"id_hash": id_number.hash}])
    persons[index] = {
        **persons[index],
        "id_hash": canonical["id_hash"],
        "id_masked": id_number.masked,
        "resolved": True,
        "linked_by": caller.sub,
        "linked_at": at.isoformat(),
    }
    hashes = sorted({p["id_hash"] for p in persons if p.get("id_hash")})
    await conn.execute("UPDATE sources SET persons = $2, person_hashes = $3 WHERE id = $1", source_id, persons, hashes)
    await conn.execute("UPDATE incidents SET updated_at = GREATEST(updated_at, $2) WHERE id = $1", incident_id, at)
    data = PersonLinked(
        incident_id=incident_id,
        source=SourceRef(
            source_id=source_id,
            origin=src["origin"],
            external_id=src["external_id"],
            category=src["category"],
            person_hashes=hashes,
        ),
        person_index=index,
        id_masked=id_number.masked,
        by=caller.sub,
        reason=reason,
        at=at,
        household_code=src["household_code"] or incident["household_code"],
        grid=src["grid"] or incident["grid"],
        beat=src["beat"] or incident["beat"],
    )
    await journal.record(
        conn,
        incident_id=incident_id,
        verb="person_linked",
        data=data,
        at=at,
        actor=caller.sub,
        event_id=derived_id("person_linked", source_id, str(index)),
        detail={  # the timeline shows the masked form, never the hashes
            "source_id": source_id,
            "person_index": index,
            "name": persons[index].get("name"),
            "id_masked": id_number.masked,
            "reason": reason,
        },
    )
    return {
        "incident_id": incident_id,
        "source_id": source_id,
        "index": index,
        "name": persons[index].get("name"),
        "role": persons[index].get("role"),
        "id_masked": id_number.masked,
        "resolved": True,
        "linked_by": caller.sub,
        "linked_at": at,
        "reason": reason,
    }
