"""Floating residencies: when the expected end passes with neither departure nor renewal the registry says so
(a durable timer, which survives a crash of the registry), and marks the residency for a departure check."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import pytest_asyncio

from jinshui.kit.clock import advance
from jinshui.kit.testing import eventually

from .test_registry_areas import Registry
from .test_registry_residents import LI, ZHANG, arrival, id_number, submit

WANG = id_number("37050219700505301")


@pytest_asyncio.fixture
async def two(stack, service_env, servers, stream_prefix):
    s = await stack(services=("registry", "gateway"))
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        await client.set_up_areas()
        made = await client.ok(
            "POST", "/v1/households", json={"address": "金水小区5号楼101", "grid": "G01"}, status=201
        )
        client.codes = [made["code"]]
        yield s, client


def days(n: float) -> str:
    return (datetime.now(UTC) + timedelta(days=n)).isoformat()


async def test_an_expected_end_passing_unanswered_is_said_once_even_across_a_crash(two):
    s, registry = two
    [a] = registry.codes
    body = {
        "arrivals": [
            arrival(a, ZHANG, "张伟", expected_end=days(3)),  # expires
            arrival(a, LI, "李娜", expected_end=days(3)),  # departs first
            arrival(a, WANG, "王强", expected_end=days(3)),  # renewed to later
        ]
    }
    assert (await submit(registry, "/v1/residents/arrivals", body))["status"] == "applied"
    gone = {"departures": [{"household_code": a, "person": {"id_number": LI}, "departed_at": days(0)}]}
    assert (await submit(registry, "/v1/residents/departures", gone))["status"] == "applied"
    renewal = {"renewals": [{"household_code": a, "person": {"id_number": WANG}, "expected_end": days(40)}]}
    assert (await submit(registry, "/v1/residents/renewals", renewal))["status"] == "applied"

    # The registry crashes; the timers are rows, so the restarted process still has them.
    s.kill("registry", signal.SIGKILL)
    await s.wait_exit("registry", 15)
    advance(registry.clock_file, 5 * 86400)
    await s.start_service("registry")

    async def expired():
        return await registry.events("residency.expired.v1")

    [event] = await eventually(expired, timeout=60, what="the expiry of the unrenewed floating residency")
    card = await registry.ok("GET", f"/v1/households/{a}", role="police")
    zhang = next(r for r in card["residents"] if r["name"] == "张伟")
    assert event["data"]["person_id"] == zhang["person_id"] and event["data"]["grid"] == "G01"
    assert event["data"]["beat"] == "B1" and event["data"]["kind"] == "floating" and event["data"]["id_hash"]
    assert zhang["departure_check"] is True and zhang["expired_at"]
    wang = next(r for r in card["residents"] if r["name"] == "王强")
    assert wang["departure_check"] is False and wang["expired_at"] is None
    assert [e["data"]["residency_id"] for e in await registry.events("residency.renewed.v1")]

    # The renewed one expires at its new end, once.
    advance(registry.clock_file, 40 * 86400)

    async def both():
        found = await registry.events("residency.expired.v1")
        return found if len(found) >= 2 else None

    found = await eventually(both, timeout=60, what="the renewed residency expiring at its new end")
    assert sorted(e["data"]["person_id"] for e in found) == sorted([zhang["person_id"], wang["person_id"]])
    versions = (await registry.ok("GET", f"/v1/households/{a}/history"))["versions"]
    assert [v["action"] for v in versions if v["entity"] == "residency"].count("expired") == 2
