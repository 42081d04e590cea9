"""PostgreSQL: a pool per service bound to its own schema, and SQL migrations applied at start."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg
import orjson

log = logging.getLogger(__name__)
KIT_MIGRATIONS = Path(__file__).parent / "migrations"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


def _check_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a safe SQL identifier: {name!r}")
    return name


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def connect(dsn: str, *, schema: str) -> asyncpg.Connection:
    """One connection bound to the schema (for LISTEN and tools)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": _check_ident(schema)})
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, *, schema: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections see the service's schema first; the schema is created if absent."""
    _check_ident(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    finally:
        await conn.close()
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema},
        init=_init_connection,
    )


async def migrate(pool: asyncpg.Pool, *, schema: str, sources: list[tuple[str, Path]]) -> list[str]:
    """Apply pending `*.sql` files in name order, per source (namespace, folder); returns those applied.

    One transaction under an advisory lock, so that replicas starting together apply each file once.
    """
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"jinshui-migrate-{schema}")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   namespace text NOT NULL, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (namespace, name))"""
        )
        done = {(r["namespace"], r["name"]) for r in await conn.fetch("SELECT * FROM schema_migrations")}
        for namespace, folder in sources:
            for path in sorted(Path(folder).glob("*.sql")):
                if (namespace, path.name) in done:
                    continue
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (namespace, name) VALUES ($1, $2)", namespace, path.name
                )
                applied.append(f"{namespace}/{path.name}")
    if applied:
        log.info("migrations applied", extra={"schema": schema, "applied": applied})
    return applied
