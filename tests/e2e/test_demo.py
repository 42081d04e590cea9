"""`jinshui demo` against a running stack: a community like Jinshui's, reachable through the API as its users would
see it; a second run changes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import nats
import orjson
import pytest_asyncio

from .test_registry_areas import Registry

HOUSEHOLDS = 264  # small for the test; the default is 3,000
GRIDS = [f"G{g:02d}" for g in range(1, 12)]
DAY = datetime.now(ZoneInfo("Asia/Shanghai")).date() - timedelta(days=1)  # a day that is over, fixed for both runs


@pytest_asyncio.fixture
async def platform(stack, service_env, servers, stream_prefix):
    s = await stack(services=("registry", "incidents", "risk", "gateway"))
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        client.gateway_url = s.url("gateway")
        yield client


async def demo(client: Registry) -> tuple[dict, str]:
    argv = ["demo", "--households", str(HOUSEHOLDS), "--visits", "4", "--url", client.gateway_url]
    argv += ["--home", client.home, "--json", "--date", DAY.isoformat()]
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "jinshui.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return orjson.loads(done.stdout[done.stdout.index("\n{") + 1 :]), done.stdout


async def registry_events(client: Registry) -> int:
    await client.published()
    nc = await nats.connect(client.nats_url)
    try:
        return (await nc.jetstream().stream_info(f"{client.prefix.upper()}_REGISTRY")).state.messages
    finally:
        await nc.close()


async def test_the_demo_fills_a_community_and_a_second_run_changes_nothing(platform):
    made, printed = await demo(platform)
    assert made["import"]["rejected"] == 0 and made["import"]["households_new"] == HOUSEHOLDS
    assert 0.10 <= made["floating_or_tenant"] / made["residents"] <= 0.30, "about 15% floating, as the seed says"
    assert "households: 264" in printed and "visits on" in printed

    # What users see through the API: every household in one of the 11 grids of the beat, the day's visits counted.
    month = {"month": DAY.strftime("%Y-%m")}
    covered = [await platform.ok("GET", f"/v1/grids/{g}/coverage", role="police", params=month) for g in GRIDS]
    assert sum(c["households"] for c in covered) == HOUSEHOLDS
    assert sum(c["visited"] for c in covered) == made["visits"] == 4 * len(GRIDS)
    beats = await platform.ok("GET", "/v1/beats", role="police")
    assert any(b["code"] == "B1" and sorted(b["grids"]) == GRIDS for b in beats["beats"])

    # A let house: its letting and tenants on the card; tags and units as registered.
    let = await platform.ok("POST", "/v1/persons/search", role="police", json={"address": "金水小区"})
    assert let["persons"], "residents are found by address"
    tenant = next(p for p in let["persons"] if p["kind"] == "tenant")
    card = await platform.ok("GET", f"/v1/households/{tenant['household_code']}", role="police")
    assert card["lettings"] and card["lettings"][0]["stopped_on"] is None
    assert made["lettings"] > 0 and sum(made["tags"].values()) > 0 and made["units"] == 94
    units = await platform.ok("GET", "/v1/units", role="police", params={"grid": "G01"})
    assert units["units"], "the units are registered"

    before = await registry_events(platform)
    again, _ = await demo(platform)
    assert again["import"]["households_new"] == again["import"]["residencies_new"] == 0
    assert again["import"]["unchanged"] == again["import"]["rows"] and again["units"] == 0
    assert await registry_events(platform) == before, "a second run makes no event"
