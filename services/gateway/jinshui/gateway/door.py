"""What every request meets at the door before a route: body size, media type, rate."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jinshui.kit.problems import Problem, problem_response

JSON_TYPES = ("application/json", "application/merge-patch+json")


STREAMED_CSV = frozenset({"/v1/imports"})


class DoorMiddleware:
    """413 above the body limit (declared or streamed), 415 for a body that is not JSON."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if path in STREAMED_CSV and headers.get("content-type", "").split(";")[0].strip().lower() == "text/csv":
            await self.app(scope, receive, send)  # a bulk import: streamed on, never held whole
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._problem(scope, send, 413, f"the body is larger than {self.max_body_bytes} bytes", path)
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in JSON_TYPES and (declared not in (None, "0")):
            await self._problem(
                scope, send, 415, f"send the body as application/json (got {media or 'no content type'})", path
            )
            return
        # Read the whole body here (it is bounded), so that an oversized stream is refused before any route.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._problem(scope, send, 413, f"the body is larger than {self.max_body_bytes} bytes", path)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _problem(scope: Scope, send: Send, status: int, detail: str, path: str) -> None:
        response = problem_response(status, detail, instance=path)
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RateLimiter:
    """A token bucket per caller; the rate and burst are set per role. In memory, per gateway process."""

    def __init__(self, limits: dict[str, tuple[float, float]], *, default: tuple[float, float]) -> None:
        self.limits, self.default = limits, default
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, *, sub: str, role: str, now: float | None = None) -> None:
        rate, burst = self.limits.get(role, self.default)
        if rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(sub, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            retry = max(1, int((1 - tokens) / rate + 0.999))
            self._buckets[sub] = (tokens, now)
            raise Problem(
                429,
                f"too many requests for role {role}: at most {rate:g}/s (burst {burst:g})",
                type="rate-limited",
                headers={"Retry-After": str(retry)},
            )
        self._buckets[sub] = (tokens - 1, now)
