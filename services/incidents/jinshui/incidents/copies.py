"""Incidents' copy of the registry follows what the registry publishes besides single registrations: households
imported in bulk, households and persons found to be one (merged into the record kept)."""

from __future__ import annotations

import asyncpg

from jinshui.contracts.envelope import CloudEvent
from jinshui.contracts.registry import (
    REGISTRY_HOUSEHOLDS_IMPORTED,
    REGISTRY_HOUSEHOLDS_MERGED,
    REGISTRY_PERSONS_MERGED,
    HouseholdRegistered,
    HouseholdsImported,
    HouseholdsMerged,
    PersonsMerged,
)
from jinshui.incidents import addresses
from jinshui.kit.consumer import Permanent, Retry

# Bulk imports and merges are published keyed or not (a merge of persons has no household): both forms.
SUBJECTS = [
    s
    for subject in (REGISTRY_HOUSEHOLDS_IMPORTED, REGISTRY_HOUSEHOLDS_MERGED, REGISTRY_PERSONS_MERGED)
    for s in (subject, subject + ".>")
]
HOUSEHOLDS_IMPORTED = "org.jinshui.registry.household.imported.v1"
HOUSEHOLDS_MERGED = "org.jinshui.registry.household.merged.v1"
PERSONS_MERGED = "org.jinshui.registry.person.merged.v1"
UPSERT = """INSERT INTO households (code, address, grid, beat, registered_at, numbers_key)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (code) DO UPDATE SET address = $2, grid = $3, beat = $4, numbers_key = $6"""


async def keep_households(conn: asyncpg.Connection, households: list[HouseholdRegistered]) -> None:
    """Upsert households into the copy police calls and reports are located against."""
    await conn.executemany(
        UPSERT,
        [(h.code, h.address, h.grid, h.beat, h.registered_at, addresses.numbers_key(h.address)) for h in households],
    )


async def on_registry(conn: asyncpg.Connection, event: CloudEvent) -> None:
    if event.type == HOUSEHOLDS_IMPORTED:
        await keep_households(conn, _parse(HouseholdsImported, event).households)
    elif event.type == HOUSEHOLDS_MERGED:
        await households_merged(conn, _parse(HouseholdsMerged, event))
    elif event.type == PERSONS_MERGED:
        await persons_merged(conn, _parse(PersonsMerged, event), at=event.time)
    else:
        raise Permanent(f"incidents keeps no copy from {event.type}")


async def households_merged(conn: asyncpg.Connection, m: HouseholdsMerged) -> None:
    """The merged code now means the kept household: calls naming it land there, and its address no longer
    competes with the kept one's when a free-text address is resolved."""
    known = await conn.fetchval("SELECT count(*) FROM households WHERE code = ANY($1::text[])", [m.kept, m.merged])
    if known < 2:
        raise Retry(f"households {m.kept} and {m.merged} are not both in the copy yet", delay=5.0)
    await conn.execute("UPDATE households SET merged_into = $2 WHERE code = $1 OR merged_into = $1", m.merged, m.kept)
    kept = await conn.fetchrow("SELECT address, grid, beat FROM households WHERE code = $1", m.kept)
    await conn.execute(
        "UPDATE sources SET household_code = $2, grid = $3, beat = $4 WHERE household_code = $1",
        m.merged,
        m.kept,
        kept["grid"],
        kept["beat"],
    )
    await conn.execute(
        "UPDATE incidents SET household_code = $2, grid = $3, beat = $4, address = $5 WHERE household_code = $1",
        m.merged,
        m.kept,
        kept["grid"],
        kept["beat"],
        kept["address"],
    )


async def persons_merged(conn: asyncpg.Connection, m: PersonsMerged, *, at) -> None:
    """The merged record's keyed hash is the kept person's from now on, in earlier sources too."""
    if m.merged_id_hash == m.kept_id_hash:
        return
    await conn.execute(
        """INSERT INTO person_aliases (merged_hash, kept_hash, merge_id, merged_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (merged_hash) DO NOTHING""",
        m.merged_id_hash,
        m.kept_id_hash,
        m.merge_id,
        m.merged_at,
    )
    await conn.execute(
        "UPDATE person_aliases SET kept_hash = $2 WHERE kept_hash = $1", m.merged_id_hash, m.kept_id_hash
    )
    await conn.execute(
        """UPDATE sources SET person_hashes = ARRAY(
               SELECT DISTINCT CASE WHEN h = $1 THEN $2 ELSE h END FROM unnest(person_hashes) h ORDER BY 1)
           WHERE person_hashes @> ARRAY[$1]::text[]""",
        m.merged_id_hash,
        m.kept_id_hash,
    )


async def canonical_persons(conn: asyncpg.Connection, persons: list[dict]) -> list[dict]:
    """Mentions with a merged person's hash carry the kept person's instead (the mention's masked form stays)."""
    hashes = [p["id_hash"] for p in persons if p.get("id_hash")]
    if not hashes:
        return persons
    aliases = dict(
        await conn.fetch(
            "SELECT merged_hash, kept_hash FROM person_aliases WHERE merged_hash = ANY($1::text[])", hashes
        )
    )
    if not aliases:
        return persons
    return [{**p, "id_hash": aliases.get(p.get("id_hash"), p.get("id_hash"))} for p in persons]


async def kept_household(conn: asyncpg.Connection, code: str) -> str:
    """The code a household is known by now (itself unless merged)."""
    return await conn.fetchval("SELECT coalesce(merged_into, code) FROM households WHERE code = $1", code) or code


def _parse(model, event: CloudEvent):
    from pydantic import ValidationError

    try:
        return model.model_validate(event.data)
    except ValidationError as e:
        raise Permanent(f"not a valid {event.type}: {e.errors()[:3]}") from e
