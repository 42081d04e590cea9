"""Idempotency keys (IETF draft semantics) on submitting POSTs, claimed in a KV bucket with a lease."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoStreamResponseError, ServiceUnavailableError
from nats.js.kv import KeyValue

from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

log = logging.getLogger(__name__)
KEY_NS = uuid.UUID("b1f4e0a2-7c39-4d55-8e61-2f9d0c4a6b17")
HEADER = "Idempotency-Key"
INTEGRATION_CLIENTS = ("grid_platform", "police_platform", "gate_system")
MAX_KEY_LENGTH = 255
RELEASE_RETRY_SECONDS = 0.25
# What a bucket answers while its stream elects a leader or the connection moves to another server.
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


class Idempotency:
    """The key is (caller, method, path, Idempotency-Key); the body's hash decides replay (same) or 422."""

    def __init__(self, kv: KeyValue, *, lease_seconds: float = 30.0) -> None:
        self.kv, self.lease_seconds = kv, lease_seconds
        self._releasing: set[asyncio.Task] = set()

    @staticmethod
    def _kv_key(caller: Identity, request: Request, key: str) -> str:
        raw = "\x1f".join((caller.sub, request.method, request.url.path, key))
        return hashlib.sha256(raw.encode()).hexdigest()

    async def run(self, request: Request, caller: Identity, handler: Callable[[], Awaitable[Response]]) -> Response:
        """Run `handler` at most once per key; replay its answer for the same body."""
        key = request.headers.get(HEADER)
        if key is None:
            if caller.role in INTEGRATION_CLIENTS:
                raise Problem(
                    400, f"the {HEADER} header is required for integration clients", type="idempotency-key-missing"
                )
            return await handler()
        key = key.strip().strip('"')
        if not key or len(key) > MAX_KEY_LENGTH:
            raise Problem(400, f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters", type="idempotency-key-invalid")
        kv_key = self._kv_key(caller, request, key)
        request.state.idempotency_id = str(uuid.uuid5(KEY_NS, kv_key))
        body_hash = hashlib.sha256(await request.body()).hexdigest()
        revision = await self._claim(kv_key, body_hash)
        try:
            response = await handler()
        except BaseException:
            await self._release(kv_key, revision)
            raise
        if response.status_code >= 500:
            await self._release(kv_key, revision)
            return response
        done = {
            "state": "done",
            "body_hash": body_hash,
            "status": response.status_code,
            "body": response.body.decode(),
            "headers": {k: v for k, v in response.headers.items() if k.lower() in ("location", "content-type")},
        }
        try:
            await self.kv.update(kv_key, orjson.dumps(done), last=revision)
        except KeyWrongLastSequenceError:
            pass  # our lease ran out and another request took the key over; its answer will be kept
        except Exception as e:
            # The work is done; only its record is missing. A retry after the lease redoes it under the same
            # derived id, which the effects deduplicate, so the answer stands.
            log.warning("idempotency record not kept", extra={"error": repr(e)})
        return response

    async def _claim(self, kv_key: str, body_hash: str) -> int:
        claim = orjson.dumps(
            {"state": "in_flight", "body_hash": body_hash, "lease_until": time.time() + self.lease_seconds}
        )
        try:
            return await self.kv.create(kv_key, claim)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(kv_key)
        except KeyNotFoundError:
            return await self._claim(kv_key, body_hash)
        state: dict[str, Any] = orjson.loads(entry.value)
        if state.get("body_hash") != body_hash:
            raise Problem(
                422,
                f"this {HEADER} was used with another request body",
                type="idempotency-key-reused",
            )
        if state.get("state") == "done":
            raise _Replay(state)
        if state.get("lease_until", 0) < time.time():
            try:
                return await self.kv.update(kv_key, claim, last=entry.revision)
            except KeyWrongLastSequenceError:
                pass
        raise Problem(
            409,
            f"a request with this {HEADER} is still in flight",
            type="idempotency-key-in-flight",
            headers={"Retry-After": "1"},
        )

    async def _release(self, kv_key: str, revision: int) -> None:
        if not await self._try_release(kv_key, revision):
            # The bucket is away for a moment (its stream's leader election, a reconnect): keep trying in the
            # background, so that the client's retry is taken soon after it is back, not only when the lease ends.
            task = asyncio.create_task(
                self._release_later(kv_key, revision, until=time.monotonic() + self.lease_seconds)
            )
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _try_release(self, kv_key: str, revision: int) -> bool:
        """Delete the claim; False only when the bucket could not be reached (worth another try)."""
        try:
            await self.kv.delete(kv_key, last=revision)
        except TRANSIENT:
            return False
        except Exception:
            pass  # taken over or already gone: the lease expires on its own if need be
        return True

    async def _release_later(self, kv_key: str, revision: int, *, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(RELEASE_RETRY_SECONDS)
            if await self._try_release(kv_key, revision):
                return


class _Replay(Exception):
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state


def replay_response(state: dict[str, Any]) -> Response:
    headers = dict(state.get("headers", {}))
    headers["Idempotent-Replayed"] = "true"
    media = headers.pop("content-type", "application/json")
    return Response(state["body"].encode(), status_code=state["status"], headers=headers, media_type=media)


async def run_idempotent(idem: Idempotency, request: Request, caller: Identity, handler) -> Response:
    try:
        return await idem.run(request, caller, handler)
    except _Replay as r:
        return replay_response(r.state)


__all__ = ["HEADER", "INTEGRATION_CLIENTS", "Idempotency", "JSONResponse", "run_idempotent"]
