"""The idempotency claim protocol against a real NATS KV bucket: in flight, replay, and a crashed claim's lease."""

from __future__ import annotations

import asyncio
import hashlib
import time

import orjson
import pytest
import pytest_asyncio
from fastapi.responses import JSONResponse
from nats.js.errors import NoStreamResponseError
from starlette.requests import Request

from jinshui.contracts.streams import Naming
from jinshui.gateway.idempotency import Idempotency, run_idempotent
from jinshui.gateway.submissions import open_bucket
from jinshui.kit import natsconn
from jinshui.kit.problems import Problem
from jinshui.kit.settings import ServiceSettings
from jinshui.kit.tokens import Identity

CALLER = Identity(sub="platform-1", role="grid_platform")


@pytest_asyncio.fixture
async def idem(servers, stream_prefix):
    nc = await natsconn.connect(ServiceSettings(nats_url=servers.nats_url), name="idem-test")
    kv = await open_bucket(nc.jetstream(), Naming(stream_prefix), "idempotency", ttl_seconds=3600)
    yield Idempotency(kv, lease_seconds=0.5)
    await nc.close()


def request(key: str, body: bytes = b'{"visits": []}') -> Request:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/visits",
        "headers": [(b"idempotency-key", key.encode())],
        "query_string": b"",
    }
    return Request(scope, receive)


async def test_a_second_request_while_the_first_is_in_flight_is_409_then_replayed(idem):
    release, started = asyncio.Event(), asyncio.Event()
    calls = 0

    async def handler():
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return JSONResponse({"submission_id": "s-1"}, status_code=202)

    first = asyncio.create_task(run_idempotent(idem, request("k"), CALLER, handler))
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(Problem) as refused:
        await run_idempotent(idem, request("k"), CALLER, handler)
    assert refused.value.status == 409
    release.set()
    assert (await first).status_code == 202
    replay = await run_idempotent(idem, request("k"), CALLER, handler)
    assert replay.status_code == 202 and orjson.loads(replay.body) == {"submission_id": "s-1"}
    assert replay.headers["idempotent-replayed"] == "true"
    assert calls == 1


async def test_a_crashed_claim_frees_the_key_when_its_lease_ends(idem):
    # What a gateway killed mid-request leaves behind: a claim nobody will finish.
    key = Idempotency._kv_key(CALLER, request("crash"), "crash")
    body_hash = hashlib.sha256(b'{"visits": []}').hexdigest()
    stale = {"state": "in_flight", "body_hash": body_hash, "lease_until": time.time() + 0.3}
    await idem.kv.create(key, orjson.dumps(stale))

    async def handler():
        return JSONResponse({"submission_id": "s-2"}, status_code=202)

    with pytest.raises(Problem) as refused:
        await run_idempotent(idem, request("crash"), CALLER, handler)
    assert refused.value.status == 409
    deadline = time.monotonic() + 5
    while True:
        try:
            response = await run_idempotent(idem, request("crash"), CALLER, handler)
            break
        except Problem as p:
            assert p.status == 409 and time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert response.status_code == 202


async def test_a_failed_attempt_releases_the_key(idem):
    async def broken():
        raise RuntimeError("NATS went away")

    with pytest.raises(RuntimeError):
        await run_idempotent(idem, request("retry-me"), CALLER, broken)

    async def fine():
        return JSONResponse({"submission_id": "s-3"}, status_code=202)

    assert (await run_idempotent(idem, request("retry-me"), CALLER, fine)).status_code == 202


class _BucketAwayForAMoment:
    """The KV bucket as it is while its stream elects a leader: the first deletes find no stream to answer."""

    def __init__(self, kv, failures: int) -> None:
        self.kv, self.failures = kv, failures

    def __getattr__(self, name):
        return getattr(self.kv, name)

    async def delete(self, key, last=None):
        if self.failures > 0:
            self.failures -= 1
            raise NoStreamResponseError()
        return await self.kv.delete(key, last=last)


async def test_a_key_whose_release_met_a_leader_election_is_freed_soon_after_not_at_the_lease(idem):
    away = Idempotency(_BucketAwayForAMoment(idem.kv, failures=2), lease_seconds=30)

    async def unavailable():
        raise Problem(503, "the submission could not be made durable")

    with pytest.raises(Problem):
        await run_idempotent(away, request("election"), CALLER, unavailable)

    async def fine():
        return JSONResponse({"submission_id": "s-4"}, status_code=202)

    deadline = time.monotonic() + 5  # well inside the 30 s lease
    while True:
        try:
            response = await run_idempotent(away, request("election"), CALLER, fine)
            break
        except Problem as p:
            assert p.status == 409 and time.monotonic() < deadline, "the key stayed claimed until its lease"
            await asyncio.sleep(0.05)
    assert response.status_code == 202
