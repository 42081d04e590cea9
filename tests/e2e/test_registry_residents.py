"""Residents through the gateway: arrivals, departures and moves are submitted with personal data protected at the
door; the household card masks it; police stating a purpose see it whole, and that read is audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import nats
import pytest_asyncio

from jinshui.kit.testing import eventually, id_number

from .test_registry_areas import PROBLEM, Registry

WAIT = {"Prefer": "wait=20"}


ZHANG = id_number("37050219900101123")  # born 1990-01-01, odd sequence: male
LI = id_number("37050219851212002")
ZHANG_PHONE = "13812345678"


@pytest_asyncio.fixture
async def registry(stack, service_env, servers, stream_prefix):
    s = await stack(services=("registry", "gateway"))
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        await client.set_up_areas()
        client.codes = []
        for address in ("金水小区1号楼1单元101", "金水小区2号楼1单元202"):
            made = await client.ok("POST", "/v1/households", json={"address": address, "grid": "G01"}, status=201)
            client.codes.append(made["code"])
        yield client


def at(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()


async def submit(registry: Registry, path: str, body: dict, role: str = "grid_worker") -> dict:
    r = await registry.post(path, json=body, headers=registry.auth(role, "gw-1", **WAIT))
    assert r.status_code == 200, r.text
    return r.json()


def arrival(code: str, number: str, name: str, **extra) -> dict:
    person = {"name": name, "id_number": number, **extra.pop("person", {})}
    return {"household_code": code, "person": person, "kind": "floating", "arrived_at": at(10), **extra}


async def test_arrive_move_depart_with_every_refusal_named(registry):
    a, b = registry.codes
    first = await submit(
        registry,
        "/v1/residents/arrivals",
        {
            "arrivals": [
                arrival(a, ZHANG, "张伟", person={"phone": ZHANG_PHONE}),
                arrival(a, LI, "李娜", kind="permanent"),
            ]
        },
    )
    assert first["status"] == "applied", first
    card = await registry.ok("GET", f"/v1/households/{a}", role="grid_worker")
    residents = {r["name"]: r for r in card["residents"]}
    assert residents["张伟"]["id_number"] == "370502********" + ZHANG[-4:]
    assert residents["张伟"]["phone"] == "138****5678"
    assert residents["张伟"]["birth_date"] == "1990-01-01" and residents["张伟"]["sex"] == "male"
    assert residents["李娜"]["kind"] == "permanent" and card["personal_data"] == "masked"

    again = await submit(registry, "/v1/residents/arrivals", {"arrivals": [arrival(b, ZHANG, "张伟")]})
    assert again["outcomes"][0]["status"] == "rejected"
    assert again["outcomes"][0]["reason"] == f"the person is resident in household {a}: submit a move, not an arrival"

    move = {"from_household": a, "to_household": b, "person": {"id_number": ZHANG}, "moved_at": at(5)}
    assert (await submit(registry, "/v1/residents/moves", {"moves": [move]}))["status"] == "applied"
    assert [r["name"] for r in (await registry.ok("GET", f"/v1/households/{a}"))["residents"]] == ["李娜"]
    moved = (await registry.ok("GET", f"/v1/households/{b}"))["residents"]
    assert [(r["name"], r["kind"]) for r in moved] == [("张伟", "floating")]

    early = {"household_code": b, "person": {"person_id": moved[0]["person_id"]}, "departed_at": at(7)}
    later = {"household_code": b, "person": {"id_number": ZHANG}, "departed_at": at(1), "reason": "回老家"}
    result = await submit(registry, "/v1/residents/departures", {"departures": [early, later, later]})
    assert [o["status"] for o in result["outcomes"]] == ["rejected", "applied", "rejected"]
    assert "is dated before the arrival" in result["outcomes"][0]["reason"]
    assert result["outcomes"][2]["reason"].startswith(f"the person already departed from household {b} on ")
    assert (await registry.ok("GET", f"/v1/households/{b}"))["residents"] == []

    versions = (await registry.ok("GET", f"/v1/households/{b}/history", role="police"))["versions"]
    assert [(v["entity"], v["action"]) for v in versions] == [
        ("household", "registered"),
        ("residency", "arrived"),
        ("residency", "departed"),
    ]
    assert versions[1]["data"]["move_id"] and versions[2]["data"]["reason"] == "回老家"
    assert versions[1]["actor"] == "gw-1" and versions[1]["submission_id"]

    residents = [e for e in await registry.events(".v1") if ".registry.resident." in e["type"]]
    assert [(e["data"]["household_code"], e["type"].split(".")[-2]) for e in residents] == [
        (a, "arrived"),
        (a, "arrived"),
        (a, "departed"),
        (b, "arrived"),
        (b, "departed"),
    ]


async def test_personal_data_never_travels_in_clear_and_bad_numbers_are_named(registry):
    a, _ = registry.codes
    bad = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")
    r = await registry.post(
        "/v1/residents/arrivals",
        json={"arrivals": [arrival(a, bad, "王五")]},
        headers=registry.auth("grid_worker"),
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    [error] = r.json()["errors"]
    assert error["field"] == "body.arrivals[0].person.id_number" and "check digit" in error["reason"]

    body = {"arrivals": [arrival(a, ZHANG, "张伟", person={"phone": ZHANG_PHONE})]}
    assert (await submit(registry, "/v1/residents/arrivals", body))["status"] == "applied"
    for stream in ("INTAKE", "REGISTRY"):
        for subject, data in await registry.stream_messages(stream):
            assert ZHANG.encode() not in data and ZHANG_PHONE.encode() not in data, f"{subject} holds them in clear"


async def test_search_reveal_and_audit(registry, stream_prefix):
    a, b = registry.codes
    arrivals = [arrival(a, ZHANG, "张伟", person={"phone": ZHANG_PHONE}), arrival(b, LI, "李娜")]
    assert (await submit(registry, "/v1/residents/arrivals", {"arrivals": arrivals}))["status"] == "applied"

    async def search(**query) -> list[str]:
        found = await registry.ok("POST", "/v1/persons/search", role="police", json=query)
        return [p["name"] for p in found["persons"]]

    assert await search(name_prefix="张") == ["张伟"]
    assert await search(id_number=LI) == ["李娜"]
    assert await search(phone="138 1234 5678") == ["张伟"]
    assert await search(address="2号楼") == ["李娜"]
    assert await search(name_prefix="李", address="1号楼") == []

    r = await registry.get(f"/v1/households/{a}", headers=registry.auth("grid_worker", **{"X-Purpose": quote("走访")}))
    assert r.status_code == 403, "only police see personal data whole"
    purpose = {"X-Purpose": quote("警情核查 110-20260101-7")}
    card = await registry.ok(
        "GET", f"/v1/households/{a}", role="police", headers=registry.auth("police", "po-7", **purpose)
    )
    assert card["personal_data"] == "whole"
    assert card["residents"][0]["id_number"] == ZHANG and card["residents"][0]["phone"] == ZHANG_PHONE
    person_id = card["residents"][0]["person_id"]

    async def audited():
        reads = (await registry.ok("GET", f"/v1/audit?person_id={person_id}"))["reads"]
        return [r for r in reads if r["purpose"]] or None

    [read] = await eventually(audited, timeout=60, what="the read in the audit index")
    assert read["reader"] == "po-7" and read["purpose"] == "警情核查 110-20260101-7"
    assert read["resource"] == f"/v1/households/{a}" and read["fields"] == ["name", "id_number", "phone"]
    # The masked reads (the searches that found him) are in the index too, with what they showed.
    reads = (await registry.ok("GET", f"/v1/audit?person_id={person_id}"))["reads"]
    searches = [r for r in reads if r["resource"] == "/v1/persons/search"]
    assert searches and all(r["fields"] == ["name", "id_number:masked", "phone:masked"] for r in searches)
    r = await registry.get("/v1/audit", headers=registry.auth("police"))
    assert r.status_code == 403

    # The audit stream is gone: no read of the file can be audited, so none is answered, masked or whole.
    nc = await nats.connect(registry.nats_url)
    try:
        await nc.jetstream().delete_stream(f"{stream_prefix.upper()}_AUDIT")
    finally:
        await nc.close()
    r = await registry.get(f"/v1/households/{a}", headers=registry.auth("police", "po-7", **purpose))
    assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
    assert ZHANG not in r.text
    r = await registry.get(f"/v1/households/{a}", headers=registry.auth("police"))
    assert r.status_code == 503 and ZHANG[-4:] not in r.text
