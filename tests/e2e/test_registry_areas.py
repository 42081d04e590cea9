"""The registry's set-up through the gateway: grids, beats, coverage, assignments, households with checked codes."""

from __future__ import annotations

import httpx
import nats
import orjson
import pytest_asyncio

from jinshui.kit.tokens import issue_token

from . import settle

PROBLEM = "application/problem+json"
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXY"


class Registry(httpx.AsyncClient):
    """The gateway as registry users see it, plus a reader of this test's REGISTRY and INTAKE streams."""

    home: str
    nats_url: str
    prefix: str
    clock_file: str
    registry_url: str

    def auth(self, role: str, sub: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(home=self.home, role=role, sub=sub)}", **extra}

    async def ok(self, method: str, url: str, role: str = "community_admin", status: int = 200, **kw) -> dict:
        headers = kw.pop("headers", None) or self.auth(role)
        r = await self.request(method, url, headers=headers, **kw)
        assert r.status_code == status, r.text
        return r.json()

    async def stream_messages(self, stream: str) -> list[tuple[str, bytes]]:
        """Every message in this test's stream (subject without the prefix, raw data), once the registry's outbox is
        published: what has been answered is all there."""
        await self.published()
        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            name = f"{self.prefix.upper()}_{stream}"
            last = (await js.stream_info(name)).state.last_seq
            out = []
            for seq in range(1, last + 1):
                msg = await js.get_msg(name, seq)
                out.append((msg.subject.removeprefix(self.prefix + "."), msg.data))
            return out
        finally:
            await nc.close()

    async def published(self) -> None:
        """Wait until the registry has published what it committed (events reach the stream a moment after the
        answer: the outbox relay publishes them) and taken what it was sent, so a test reads the stream after this."""
        await settle.idle([self.registry_url])

    async def events(self, type_suffix: str) -> list[dict]:
        """The events of this test's REGISTRY stream whose type ends so."""
        found = []
        for _, data in await self.stream_messages("REGISTRY"):
            event = orjson.loads(data)
            if event["type"].endswith(type_suffix):
                found.append(event)
        return found

    @classmethod
    def through(cls, s, service_env: dict[str, str], servers, stream_prefix: str) -> Registry:
        """A client of this test's gateway, reading this test's streams and able to move its clock."""
        client = cls(base_url=s.url("gateway"), timeout=30)
        client.home, client.nats_url, client.prefix = service_env["JINSHUI_HOME"], servers.nats_url, stream_prefix
        client.clock_file = service_env["JINSHUI_CLOCK_FILE"]
        client.registry_url = s.url("registry")
        return client

    async def set_up_areas(self) -> None:
        for code in ("G01", "G02", "G03"):
            await self.ok("POST", "/v1/grids", json={"code": code, "name": f"第{code[-1]}网格"}, status=201)
        await self.ok("POST", "/v1/beats", json={"code": "B1", "name": "金水警格", "grids": ["G01", "G02"]}, status=201)


@pytest_asyncio.fixture
async def registry(stack, service_env, servers, stream_prefix):
    s = await stack(services=("registry", "gateway"))
    async with Registry.through(s, service_env, servers, stream_prefix) as client:
        yield client


async def test_areas_are_set_up_and_travel_by_event(registry):
    await registry.set_up_areas()
    worker = await registry.ok(
        "POST", "/v1/assignments", json={"person": "gw-1", "role": "grid_worker", "area": "G01"}, status=201
    )
    await registry.ok("POST", "/v1/assignments", json={"person": "po-1", "role": "officer", "area": "B1"}, status=201)

    grids = {g["code"]: g for g in (await registry.ok("GET", "/v1/grids", role="police"))["grids"]}
    assert grids["G01"]["beat"] == "B1" and grids["G01"]["grid_workers"] == ["gw-1"]
    assert grids["G03"]["beat"] is None
    beats = (await registry.ok("GET", "/v1/beats", role="grid_worker"))["beats"]
    assert beats == [{"code": "B1", "name": "金水警格", "grids": ["G01", "G02"], "officers": ["po-1"]}]

    # Coverage moves: B2 takes G02 from B1; both beats' events say what they now cover.
    await registry.ok("POST", "/v1/beats", json={"code": "B2", "name": "二警格", "grids": ["G02", "G03"]}, status=201)
    await registry.ok("POST", f"/v1/assignments/{worker['assignment_id']}/end")

    await registry.ok("GET", "/v1/grids", role="mediator")
    events = await registry.events("grid.defined.v1")
    assert sorted(e["data"]["code"] for e in events) == ["G01", "G02", "G03"]
    coverage = [(e["data"]["beat"], e["data"]["grids"]) for e in await registry.events("coverage.changed.v1")]
    assert coverage == [("B1", ["G01", "G02"]), ("B2", ["G02", "G03"]), ("B1", ["G01"])]
    changes = [(e["data"]["person"], e["data"]["change"]) for e in await registry.events("assignment.changed.v1")]
    assert changes == [("gw-1", "assigned"), ("po-1", "assigned"), ("gw-1", "ended")]


async def test_bad_set_up_is_refused_with_the_field_and_reason(registry):
    await registry.set_up_areas()
    r = await registry.post(
        "/v1/beats",
        json={"code": "B9", "name": "x", "grids": ["G01", "NOPE"]},
        headers=registry.auth("community_admin"),
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["errors"] == [{"field": "body.grids[1]", "reason": "unknown grid NOPE"}]
    assert (await registry.ok("GET", "/v1/beats"))["beats"][0]["code"] == "B1", "nothing half-applied"
    r = await registry.post(
        "/v1/grids", json={"code": "G01", "name": "again"}, headers=registry.auth("community_admin")
    )
    assert r.status_code == 409
    r = await registry.post(
        "/v1/assignments",
        json={"person": "po-2", "role": "officer", "area": "G01"},
        headers=registry.auth("community_admin"),
    )
    assert r.status_code == 422 and "unknown beat G01" in r.json()["detail"]
    r = await registry.post(
        "/v1/households", json={"address": "金水小区1-1-101", "grid": "G09"}, headers=registry.auth("community_admin")
    )
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "body.grid", "reason": "unknown grid G09"}]
    r = await registry.post(
        "/v1/households",
        json={"address": "金水小区1-1-101", "grid": "G01", "beat": "B7"},
        headers=registry.auth("community_admin"),
    )
    assert r.status_code == 422 and "covered by beat B1" in r.json()["detail"]
    r = await registry.post("/v1/grids", json={"code": "G05", "name": "x"}, headers=registry.auth("grid_worker"))
    assert r.status_code == 403


async def test_a_household_gets_a_checked_code_its_beat_and_a_qr_image(registry):
    await registry.set_up_areas()
    made = await registry.ok(
        "POST",
        "/v1/households",
        json={"address": "金水小区3号楼2单元501", "grid": "G01", "building": "3", "unit": "2", "room": "501"},
        status=201,
    )
    code = made["code"]
    assert made["beat"] == "B1" and len(code) == 9 and set(code) <= set(ALPHABET)
    card = await registry.ok("GET", f"/v1/households/{code.lower()}", role="police")
    assert card["code"] == code and card["grid"] == "G01" and card["beat"] == "B1"
    assert card["house"]["building"] == "3" and card["house"]["room"] == "501"

    # One mistyped character and one swap of neighbours are caught by the check character.
    typo = code[:3] + next(c for c in ALPHABET if c != code[3]) + code[4:]
    swapped = code[:4] + code[5] + code[4] + code[6:] if code[4] != code[5] else typo
    for wrong in (typo, swapped):
        r = await registry.get(f"/v1/households/{wrong}", headers=registry.auth("police"))
        assert r.status_code == 404 and "check character" in r.json()["detail"], wrong

    svg = await registry.get(f"/v1/households/{code}/qr", headers=registry.auth("grid_worker"))
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    png = await registry.get(f"/v1/households/{code}/qr?format=png", headers=registry.auth("grid_worker"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")

    r = await registry.post(
        "/v1/households",
        json={"address": "another", "grid": "G02", "code": code},
        headers=registry.auth("community_admin"),
    )
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM

    registered = await registry.events("household.registered.v1")
    assert [(e["data"]["code"], e["data"]["grid"], e["data"]["beat"]) for e in registered] == [(code, "G01", "B1")]
    assert registered[0]["data"]["house_id"] == card["house"]["id"]
