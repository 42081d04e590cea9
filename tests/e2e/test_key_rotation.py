"""Key rotation for personal data: `jinshui keys add` makes a new key active, the registry re-seals every stored
value in the background while police keep reading household cards whole and searching by ID number, and
`jinshui keys retire` removes the old key only once nothing uses it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest_asyncio

from jinshui.cli.main import build_parser
from jinshui.kit.pii import Keyring, Protected
from jinshui.kit.testing import eventually, id_number

from .test_registry_areas import Registry
from .test_registry_residents import WAIT, arrival

PEOPLE = [(f"居民{i}", id_number(f"3705021990{1 + i // 28:02d}{1 + i % 28:02d}{100 + i:03d}")) for i in range(40)]
PURPOSE = {"X-Purpose": quote("警情核查 110-20261127-1")}


@pytest_asyncio.fixture
async def rotating(stack, service_env, servers, stream_prefix, database_url):
    s = await stack(
        services=("registry", "gateway"),
        env_overrides={"PII_RESEAL_INTERVAL_SECONDS": "0.2", "PII_RESEAL_RECHECK_SECONDS": "0.5"},
    )
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        await client.set_up_areas()
        client.codes = []
        for address in ("金水小区5号楼1单元101", "金水小区6号楼1单元202"):
            made = await client.ok("POST", "/v1/households", json={"address": address, "grid": "G01"}, status=201)
            client.codes.append(made["code"])
        client.stack = s
        db = await asyncpg.connect(database_url, server_settings={"search_path": "registry"})
        await db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        client.db = db
        try:
            yield client
        finally:
            await db.close()


async def jinshui_keys(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`jinshui keys ...` as the ops team runs it, against this test's home and database (its exit code, output)."""
    argv = ["keys", *args, "--home", env["JINSHUI_HOME"], "--database-url", env["DATABASE_URL"]]

    def run() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parsed = build_parser().parse_args(argv)
            code = parsed.func(parsed)
        return code, out.getvalue()

    return await asyncio.to_thread(run)


async def sealed(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        """SELECT k, count(*) AS n FROM (
               SELECT id_number->>'key_id' AS k FROM persons UNION ALL
               SELECT phone->>'key_id' FROM persons WHERE phone IS NOT NULL UNION ALL
               SELECT operator_id_number->>'key_id' FROM units WHERE operator_id_number IS NOT NULL UNION ALL
               SELECT operator_phone->>'key_id' FROM units WHERE operator_phone IS NOT NULL) v GROUP BY k"""
    )
    return {r["k"]: r["n"] for r in rows}


async def test_keys_rotate_while_police_keep_reading(rotating: Registry, service_env):
    registry, db = rotating, rotating.db
    a, b = registry.codes
    arrivals = [
        arrival(a if i % 2 == 0 else b, number, name, person={"phone": f"1381234{i:04d}"} if i % 3 == 0 else {})
        for i, (name, number) in enumerate(PEOPLE)
    ]
    r = await registry.post(
        "/v1/residents/arrivals", json={"arrivals": arrivals}, headers=registry.auth("grid_worker", "gw-1", **WAIT)
    )
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    operator = {"name": "张伟", "id_number": PEOPLE[0][1], "phone": "13812340000"}
    unit = {"name": "老张面馆", "category": "restaurant", "household_code": a, "operator": operator}
    await registry.ok("POST", "/v1/units", role="grid_worker", json=unit, status=201)
    stored = sum((await sealed(db)).values())
    assert await sealed(db) == {"k1": stored} and stored == 40 + 14 + 2
    hashes = {
        r["id"]: (r["id_hash"], r["id_number"]) for r in await db.fetch("SELECT id, id_hash, id_number FROM persons")
    }

    assert (await jinshui_keys(service_env, "retire", "k1"))[0] == 1, "the active key is never retired"

    clear = {name: number for name, number in PEOPLE}
    reads, failures, stop = [0], [], asyncio.Event()

    async def read_throughout() -> None:
        """A police officer opening both cards whole and searching by ID number, over and over."""
        i = 0
        while not stop.is_set():
            name, number = PEOPLE[i % len(PEOPLE)]
            i += 1
            try:
                for code in (a, b):
                    card = await registry.get(
                        f"/v1/households/{code}", headers=registry.auth("police", "po-1", **PURPOSE)
                    )
                    if card.status_code != 200:
                        failures.append(f"card {card.status_code}: {card.text[:200]}")
                        continue
                    for resident in card.json()["residents"]:
                        if resident["id_number"] != clear.get(resident["name"], resident["id_number"]):
                            failures.append(f"{resident['name']}: shown {resident['id_number']!r}")
                found = await registry.post(
                    "/v1/persons/search", json={"id_number": number}, headers=registry.auth("police", "po-1")
                )
                if found.status_code != 200 or [p["name"] for p in found.json()["persons"]] != [name]:
                    failures.append(f"search {number[-4:]}: {found.status_code} {found.text[:200]}")
            except httpx.HTTPError as e:
                failures.append(repr(e))
            reads[0] += 1

    reader = asyncio.create_task(read_throughout())
    await eventually(lambda: reads[0] >= 3, timeout=30, what="reads before the rotation")

    # One person's row is held by another transaction: the re-sealing skips it (SKIP LOCKED) and goes on.
    held_id = sorted(hashes)[0]
    holder = await asyncpg.connect(service_env["DATABASE_URL"], server_settings={"search_path": "registry"})
    held = holder.transaction()
    await held.start()
    await holder.execute("SELECT 1 FROM persons WHERE id = $1 FOR UPDATE", held_id)
    held_values = 2 if (await db.fetchval("SELECT phone IS NOT NULL FROM persons WHERE id = $1", held_id)) else 1
    try:
        code, out = await jinshui_keys(service_env, "add")
        assert code == 0 and "added k2" in out, out
        await eventually(
            _equals(db, {"k1": held_values, "k2": stored - held_values}), timeout=30, what="all but the held row"
        )
        code, out = await jinshui_keys(service_env, "retire", "k1")
        assert code == 1 and f"k1 still seals {held_values} stored values" in out, out
    finally:
        await held.rollback()
        await holder.close()
    await eventually(_equals(db, {"k2": stored}), timeout=30, what="every stored value under k2")

    # The gateway took the new key too (it looks at the file every second): what it seals now is under k2. A
    # newcomer it sealed under k1 before it looked is re-sealed at the registry's next look (soon, here).
    newcomers: dict[str, str] = {}

    async def gateway_seals_under_k2() -> bool:
        name, number = (
            f"新来的{len(newcomers)}",
            id_number(f"370502199505{len(newcomers) % 28 + 1:02d}{100 + len(newcomers):03d}"),
        )
        newcomers[name] = number
        late = {"arrivals": [arrival(b, number, name)]}
        r = await registry.post(
            "/v1/residents/arrivals", json=late, headers=registry.auth("grid_worker", "gw-1", **WAIT)
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        _, data = (await registry.stream_messages("INTAKE"))[-1]
        return json.loads(data)["data"]["records"][0]["person"]["id_number"]["key_id"] == "k2"

    await eventually(gateway_seals_under_k2, timeout=20, interval=0.3, what="the gateway sealing under k2")
    clear.update(newcomers)
    stored += len(newcomers)
    await eventually(_equals(db, {"k2": stored}), timeout=30, what="the newcomers under k2 too")

    code, out = await jinshui_keys(service_env, "retire", "k1")
    assert code == 0 and "retired k1" in out, out
    keys_file = Keyring.development_path(Path(service_env["JINSHUI_HOME"]))
    assert set(json.loads(keys_file.read_text())["keys"]) == {"k2"}
    assert oct(os.stat(keys_file).st_mode & 0o777) == "0o600"

    async def registry_took_the_retirement() -> bool:
        metrics = (await httpx.AsyncClient().get(registry.stack.url("registry") + "/metrics")).text
        return (
            'jinshui_pii_active_key{key_id="k2"} 1.0' in metrics
            and 'jinshui_pii_sealed_values{key_id="k1"}' not in metrics
        )

    await eventually(registry_took_the_retirement, timeout=20, what="the registry's metrics after retiring k1")
    n = reads[0]
    await eventually(lambda: reads[0] >= n + 3, timeout=30, what="reads after the retirement")
    stop.set()
    await reader
    assert failures == [], failures[:5]
    assert reads[0] >= 6

    # The keyed hashes did not change (their key is separate): look-ups by ID number found everyone throughout.
    after = {r["id"]: r for r in await db.fetch("SELECT id, id_hash, id_number FROM persons")}
    for person_id, (id_hash, before) in hashes.items():
        assert after[person_id]["id_hash"] == id_hash and after[person_id]["id_number"]["hash"] == before["hash"]
        assert after[person_id]["id_number"]["ciphertext"] != before["ciphertext"]
        assert after[person_id]["id_number"]["masked"] == before["masked"]
    card = await registry.ok("GET", f"/v1/households/{a}", headers=registry.auth("police", "po-1", **PURPOSE))
    assert sorted(r["id_number"] for r in card["residents"]) == sorted(clear[r["name"]] for r in card["residents"])
    # A unit's operator (shown masked only) was re-sealed too: the keys left open it.
    keyring = Keyring.from_json(keys_file.read_bytes())
    sealed_operator = await db.fetchval("SELECT operator_id_number FROM units")
    assert keyring.reveal(Protected(**sealed_operator)) == PEOPLE[0][1]


def _equals(db: asyncpg.Connection, expected: dict[str, int]):
    async def check() -> bool:
        return await sealed(db) == expected

    return check
