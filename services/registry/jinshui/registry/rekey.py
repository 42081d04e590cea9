"""Key rotation: stored ID numbers and phones sealed under an older key are sealed again under the active one.

A background loop walks each protected column in primary-key order, a small batch per transaction, claiming
rows with FOR UPDATE SKIP LOCKED (a row a request holds is left for the next pass), and re-seals every value
whose key id is not the active key. The keyed hashes are not touched: the hash key is separate, and look-ups
by hash keep working throughout. Progress is on /metrics: values per key id (counted at the end of each pass),
and values re-sealed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from jinshui.kit.pii import Keyring, Protected

log = logging.getLogger(__name__)

SEALED = Gauge("jinshui_pii_sealed_values", "Stored ID numbers and phones, by the key that sealed them", ["key_id"])
RESEALED = Counter("jinshui_pii_resealed_total", "Stored values re-sealed under the active key")
ACTIVE = Gauge("jinshui_pii_active_key", "1 for the key new values are sealed with", ["key_id"])


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]


# Every column holding a protected value (the kit's {kind, hash, ciphertext, key_id, masked} as jsonb).
TABLES = (
    Table("persons", ("id_number", "phone")),
    Table("units", ("operator_id_number", "operator_phone")),
)


def _stale(table: Table) -> str:
    return " OR ".join(f"({c}->>'key_id') <> $1" for c in table.columns)


async def count_by_key(conn: asyncpg.Connection) -> dict[str, int]:
    """How many stored values each key sealed."""
    parts = " UNION ALL ".join(
        f"SELECT {c}->>'key_id' AS key_id FROM {t.name} WHERE {c} IS NOT NULL" for t in TABLES for c in t.columns
    )
    rows = await conn.fetch(f"SELECT key_id, count(*) AS n FROM ({parts}) v GROUP BY key_id")
    return {r["key_id"]: r["n"] for r in rows}


async def reseal_batch(pool: asyncpg.Pool, keyring: Keyring, table: Table, *, after: str, batch: int) -> str | None:
    """Re-seal one batch of `table` past the id `after`, in one transaction; the last id seen, None at the end."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT id, {", ".join(table.columns)} FROM {table.name}
                WHERE id > $2 AND ({_stale(table)}) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED""",
            keyring.active,
            after,
            batch,
        )
        resealed = 0
        for row in rows:
            values = []
            for column in table.columns:
                value = row[column]
                if value is not None and value.get("key_id") != keyring.active:
                    old = Protected(**value)
                    new = keyring.seal(old.kind, keyring.reveal(old))
                    value = {**new.model_dump(), "hash": old.hash}  # the hash key did not change
                    resealed += 1
                values.append(value)
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(table.columns))
            await conn.execute(f"UPDATE {table.name} SET {sets} WHERE id = $1", row["id"], *values)
    RESEALED.inc(resealed)
    return rows[-1]["id"] if rows else None


class Resealer:
    """The background loop. A pass walks every table; it runs when the active key is not yet known to be the only
    one in use (after a start or a key change, and while some rows are held by other transactions), and
    otherwise every `recheck` seconds, for values sealed under an older key after the last pass (a gateway that
    had not yet reloaded, INTAKE messages sealed before the change). Idle, it costs nothing."""

    def __init__(self, *, svc, batch: int = 200, interval: float = 1.0, recheck: float = 300.0) -> None:
        self.svc, self.batch, self.interval, self.recheck = svc, batch, interval, recheck
        self.last_error: str | None = None
        self.counts: dict[str, int] | None = None  # stored values per key id, at the end of the last pass
        self._clean_under: str | None = None  # the active key when a pass last found nothing left to re-seal
        self._clean_at = 0.0

    async def one_pass(self) -> int:
        """Re-seal everything not under the active key that is not locked; how many batches did work."""
        worked = 0
        for table in TABLES:
            after = ""
            while True:
                keyring: Keyring = self.svc.app.state.keyring  # a reload mid-pass is taken at the next batch
                last = await reseal_batch(self.svc.pool, keyring, table, after=after, batch=self.batch)
                if last is None:
                    break
                after, worked = last, worked + 1
        return worked

    def due(self) -> bool:
        active = self.svc.app.state.keyring.active
        return active != self._clean_under or time.monotonic() - self._clean_at >= self.recheck

    async def run(self) -> None:
        while not self.svc._stopping:
            try:
                if self.due():
                    active = self.svc.app.state.keyring.active
                    if not await self.one_pass():
                        async with self.svc.pool.acquire() as conn:
                            self.counts = await count_by_key(conn)
                        if set(self.counts) <= {active}:  # else: rows held by others, left for the next pass
                            self._clean_under, self._clean_at = active, time.monotonic()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. a value under a key this keyring lacks: said on /metrics and in the log
                self.last_error = repr(e)
                log.error("re-sealing personal data failed; retrying", extra={"error": repr(e)})
            await asyncio.sleep(self.interval)  # the service's stop is seen within one interval


def gauges(resealer: Resealer):
    """The /metrics hook: values per key (as the last pass counted them), and which key is active."""

    async def refresh(svc) -> None:
        if resealer.counts is not None:
            SEALED.clear()
            for key_id, n in resealer.counts.items():
                SEALED.labels(key_id).set(n)
        ACTIVE.clear()
        ACTIVE.labels(svc.app.state.keyring.active).set(1)

    return refresh
