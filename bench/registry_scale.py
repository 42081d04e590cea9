"""Registry at scale: the bulk-import rate (rows/s) of a generated CSV, and the household card's p50/p99 after.

    .venv/bin/python -m bench.registry_scale --rows 100000 [--cards 2000]

Starts embedded NATS and PostgreSQL (or uses NATS_URL / DATABASE_URL) and the registry and gateway as processes,
as the tests do; makes a CSV of households of 1 to 5 persons (a valid ID number each, a phone on most, about 15%
floating with an expected end), imports it through the gateway's POST /v1/imports (streamed, as `jinshui import`
does), then reads random household cards through the gateway one at a time and prints the latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson

from jinshui.cli.stack import Stack
from jinshui.cli.testing import database_dsn, make_servers
from jinshui.kit.pii import id_number_check_digit
from jinshui.kit.tokens import issue_token

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"


def make_csv(path: Path, rows: int, *, grids: int | list[str], seed: int = 7) -> int:
    """A CSV of about `rows` person rows over `grids` (codes, or how many of G01, G02…); returns the households."""
    rng = random.Random(seed)
    names = grids if isinstance(grids, list) else [f"G{g + 1:02d}" for g in range(grids)]
    households = written = 0
    with path.open("w", encoding="utf-8") as f:
        f.write("address,grid,building,unit,room,name,id_number,phone,kind,arrived_at,expected_end\n")
        while written < rows:
            households += 1
            building, room = households // 200 + 1, households % 200 + 101
            address = f"金水小区{building}号楼{room}室"
            grid = names[households % len(names)]
            for _ in range(min(rng.randint(1, 5), rows - written)):
                written += 1
                born = f"{rng.randint(1940, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
                # Unique across a million rows: the area code's digits count the thousands.
                first17 = f"{370000 + written // 1000 % 10000:06d}{born}{written % 1000:03d}"
                number = first17 + id_number_check_digit(first17)
                phone = f"1{rng.choice('3589')}{rng.randint(0, 999999999):09d}" if rng.random() < 0.8 else ""
                floating = rng.random() < 0.15
                kind = "floating" if floating else "permanent"
                ends = f"2027-{rng.randint(1, 12):02d}-15" if floating else ""
                name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
                f.write(f"{address},{grid},{building},1,{room},{name},{number},{phone},{kind},2025-06-01,{ends}\n")
    return households


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--cards", type=int, default=2000)
    ap.add_argument("--grids", type=int, default=11)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jinshui-registry-scale-"))
    servers = make_servers()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(servers.admin_database_url)
    await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    await conn.close()
    home = tmp / "home"
    home.mkdir()
    env = dict(os.environ)
    env.update(
        NATS_URL=servers.nats_url,
        DATABASE_URL=database_dsn(servers.admin_database_url, name),
        JINSHUI_STREAM_PREFIX="b" + uuid.uuid4().hex[:8],
        JINSHUI_HOME=str(home),
        JINSHUI_ENV="test",
        LOG_LEVEL="WARNING",
        RATE_LIMITS='{"police": [0, 0], "community_admin": [0, 0]}',  # measuring the card, not the limiter
    )
    stack = Stack(env=env, log_dir=tmp / "logs", services=("registry", "gateway"))
    try:
        await stack.start(120)
        admin = {"Authorization": f"Bearer {issue_token(home=home, role='community_admin', sub='bench')}"}
        csv = tmp / "import.csv"
        t0 = time.perf_counter()
        households = make_csv(csv, args.rows, grids=args.grids)
        print(
            f"generated {args.rows} rows, {households} households, {csv.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        async with httpx.AsyncClient(base_url=stack.url("gateway"), timeout=httpx.Timeout(7200, connect=10)) as gw:
            await gw.post("/v1/beats", json={"code": "B1", "name": "金水警格"}, headers=admin)
            for g in range(1, args.grids + 1):
                r = await gw.post(
                    "/v1/grids", json={"code": f"G{g:02d}", "name": f"第{g}网格", "beat": "B1"}, headers=admin
                )
                assert r.status_code == 201, r.text

            async def body():
                with csv.open("rb") as f:
                    while block := f.read(256 * 1024):
                        yield block

            t0 = time.perf_counter()
            r = await gw.post("/v1/imports", content=body(), headers={**admin, "Content-Type": "text/csv"})
            took = time.perf_counter() - t0
            summary = orjson.loads(r.content.splitlines()[0])
            print(f"import: {summary}")
            print(f"import rate: {args.rows / took:,.0f} rows/s ({args.rows} rows in {took:.1f} s)")
            t0 = time.perf_counter()
            again = orjson.loads(
                (
                    await gw.post("/v1/imports", content=body(), headers={**admin, "Content-Type": "text/csv"})
                ).content.splitlines()[0]
            )
            print(
                f"re-import: applied {again['applied']}, unchanged {again['unchanged']} "
                f"in {time.perf_counter() - t0:.1f} s"
            )

            db = await asyncpg.connect(database_dsn(servers.admin_database_url, name))
            codes = [r["code"] for r in await db.fetch("SELECT code FROM registry.households")]
            await db.close()
            police = {"Authorization": f"Bearer {issue_token(home=home, role='police', sub='po-1')}"}
            rng = random.Random(1)
            for code in rng.sample(codes, min(50, len(codes))):  # warm up
                await gw.get(f"/v1/households/{code}", headers=police)
            times = []
            for code in rng.choices(codes, k=args.cards):
                t0 = time.perf_counter()
                r = await gw.get(f"/v1/households/{code}", headers=police)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
            times.sort()
            p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
            print(
                f"household card via gateway, {len(codes)} households: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"({args.cards} sequential reads)"
            )
    finally:
        await stack.stop()
        servers.close()


if __name__ == "__main__":
    asyncio.run(main())
