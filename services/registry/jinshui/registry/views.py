"""Reads: the household card, history, person search, the audit index."""

from __future__ import annotations

from typing import Any

import asyncpg

LAST_VISITS = 5


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def household(conn: asyncpg.Connection | asyncpg.Pool, code: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT h.code, h.address, h.grid, h.beat, h.registered_at, h.house_id, h.merged_into,
                  s.use AS house_use, s.building, s.unit, s.floor, s.room
           FROM households h LEFT JOIN houses s ON s.id = h.house_id WHERE h.code = $1""",
        code,
    )


async def residents(conn, code: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT r.id AS residency_id, r.person_id, p.name, r.kind, r.arrived_at, r.expected_end,
                  r.departure_check, r.expired_at, p.id_number, p.phone, p.birth_date, p.sex
           FROM residencies r JOIN persons p ON p.id = r.person_id
           WHERE r.household_code = $1 AND r.departed_at IS NULL ORDER BY r.arrived_at, p.name""",
        code,
    )


async def last_visits(conn, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id AS visit_id, grid_worker, visited_at, concerns, people_present, persons_present,
                  follow_up_requested
           FROM visits WHERE household_code = $1 AND voided_at IS NULL ORDER BY visited_at DESC LIMIT $2""",
        code,
        LAST_VISITS,
    )
    return [dict(r) for r in rows]


async def lettings(conn, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT l.id AS letting_id, l.landlord, l.starts_on, l.expected_end, l.stopped_on, l.stop_reason,
                  coalesce(array_agg(t.person_id ORDER BY t.person_id) FILTER (WHERE t.person_id IS NOT NULL), '{}')
                      AS tenants
           FROM lettings l LEFT JOIN letting_tenants t ON t.letting_id = l.id
           WHERE l.household_code = $1 AND l.voided_at IS NULL GROUP BY l.id ORDER BY l.starts_on DESC""",
        code,
    )
    return [dict(r) for r in rows]


async def history(conn, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT seq AS version, entity, entity_id, action, data, actor, submission_id, at
           FROM history WHERE household_code = $1
              OR household_code IN (SELECT code FROM households WHERE merged_into = $1)
           ORDER BY seq""",
        code,
    )
    return [dict(r) for r in rows]


async def search_persons(
    conn,
    *,
    name_prefix: str | None,
    id_hash: str | None,
    phone_hash: str | None,
    address: str | None,
    limit: int,
    scope=None,
) -> list[asyncpg.Record]:
    where, args = ["p.merged_into IS NULL"], []
    if scope is not None and not scope.everything:
        args.extend([list(scope.grids), list(scope.beats)])
        where.append("(h.grid = ANY($1::text[]) OR h.beat = ANY($2::text[]))")
    if name_prefix:
        args.append(_like_prefix(name_prefix) + "%")
        where.append(f"p.name LIKE ${len(args)}")
    if id_hash:
        args.append(id_hash)
        where.append(f"p.id_hash = ${len(args)}")
    if phone_hash:
        args.append(phone_hash)
        where.append(f"p.phone_hash = ${len(args)}")
    if address:
        args.append("%" + _like_prefix(address) + "%")
        where.append(f"h.address LIKE ${len(args)}")
    args.append(limit)
    return await conn.fetch(
        f"""SELECT p.id AS person_id, p.name, p.id_number, p.phone, p.birth_date, p.sex,
                   r.household_code, h.address, r.kind
            FROM persons p
            LEFT JOIN residencies r ON r.person_id = p.id AND r.departed_at IS NULL
            LEFT JOIN households h ON h.code = r.household_code
            WHERE {" AND ".join(where)} ORDER BY p.name, p.id LIMIT ${len(args)}""",
        *args,
    )


async def person(conn, person_id: str) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    row = await conn.fetchrow(
        """SELECT id AS person_id, name, id_number, phone, birth_date, sex, died_on, death_reason, merged_into
           FROM persons WHERE id = $1""",
        person_id,
    )
    if row is None:
        return None, []
    stays = await conn.fetch(
        """SELECT r.id AS residency_id, r.household_code, h.address, h.grid, h.beat, r.kind, r.arrived_at,
                  r.expected_end, r.expired_at, r.departed_at, r.departure_reason
           FROM residencies r JOIN households h ON h.code = r.household_code
           WHERE r.person_id = $1 AND r.voided_at IS NULL ORDER BY r.arrived_at DESC""",
        person_id,
    )
    return row, stays


async def audit(conn, *, person_id: str | None, reader: str | None, limit: int) -> list[dict[str, Any]]:
    where, args = ["true"], []
    if person_id:
        args.append(person_id)
        where.append(f"${len(args)} = ANY(person_ids)")
    if reader:
        args.append(reader)
        where.append(f"reader = ${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"""SELECT read_id, reader, reader_role, purpose, person_ids, fields, resource, read_at FROM audit_reads
            WHERE {" AND ".join(where)} ORDER BY read_at DESC LIMIT ${len(args)}""",
        *args,
    )
    return [dict(r) for r in rows]


async def coverage(conn, *, grids: list[str], start, end) -> list[asyncpg.Record]:
    """Every household of `grids` registered before `end`, whether it was visited in [start, end)."""
    return await conn.fetch(
        """SELECT h.code, h.address, h.grid,
                  EXISTS (SELECT 1 FROM visits v WHERE v.household_code = h.code AND v.voided_at IS NULL
                          AND v.visited_at >= $2 AND v.visited_at < $3) AS visited,
                  (SELECT max(visited_at) FROM visits v
                   WHERE v.household_code = h.code AND v.voided_at IS NULL AND v.visited_at < $3) AS last_visited_at
           FROM households h WHERE h.grid = ANY($1::text[]) AND h.registered_at < $3 AND h.merged_into IS NULL
           ORDER BY h.grid, h.address, h.code""",
        grids,
        start,
        end,
    )


async def units(conn, *, house_id: str | None = None, household_code: str | None = None, grids=None, beats=None):
    """Units not voided: at a house (or registered with a household), or in grids / beats; newest last."""
    where, args = ["u.voided_at IS NULL"], []
    if house_id is not None or household_code is not None:
        args.extend([house_id, household_code])
        where.append(f"(u.house_id = ${len(args) - 1} OR u.household_code = ${len(args)})")
    if grids is not None:
        args.extend([list(grids), list(beats or ())])
        where.append(f"(u.grid = ANY(${len(args) - 1}::text[]) OR u.beat = ANY(${len(args)}::text[]))")
    return await conn.fetch(
        f"""SELECT u.*, s.address FROM units u JOIN houses s ON s.id = u.house_id
            WHERE {" AND ".join(where)} ORDER BY u.registered_at, u.id LIMIT 1000""",
        *args,
    )
