"""Calls a person waits for go on to the owning service, with the caller's identity and the trace context."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import httpx
import orjson
from fastapi import Request
from fastapi.responses import Response

from jinshui.kit import telemetry
from jinshui.kit.app import IDENTITY_NAME, IDENTITY_ROLE, IDENTITY_SUB
from jinshui.kit.pii import redact_payload
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

# What may stand in a URL path as it is (RFC 3986 pchar and "/", and "%" of what a route already quoted);
# anything else a decoded path parameter holds (control characters, "?", "#", spaces...) is percent-encoded.
PATH_SAFE = "/%:@!$&'()*+,;=-._~"


async def forward(
    request: Request, svc, caller: Identity, base_url: str, path: str, *, body: bytes | None = None
) -> Response:
    """Pass a call on to the owning service with the caller's identity and the trace context.

    `body` replaces the request's own (JSON) when the door changed it, e.g. an ID number turned into its hash.
    """
    headers = telemetry.inject({IDENTITY_SUB: caller.sub, IDENTITY_ROLE: caller.role, IDENTITY_NAME: caller.name})
    if body is not None:
        headers["content-type"] = "application/json"
    elif ct := request.headers.get("content-type"):
        headers["content-type"] = ct
    client: httpx.AsyncClient = svc.app.state.http
    if body is None:
        body = await request.body()
        if body and headers.get("content-type", "").startswith("application/json"):
            with contextlib.suppress(ValueError):
                # ID numbers and mobiles typed into free text are masked here; `id_number` / `phone` members
                # are the ones an owner needs (a search by exact number) and travel as they are.
                body = orjson.dumps(redact_payload(orjson.loads(body)))
    try:
        upstream = await client.request(
            request.method,
            base_url.rstrip("/") + quote(path, safe=PATH_SAFE),
            params=list(request.query_params.multi_items()),
            content=body,
            headers=headers,
        )
    except httpx.HTTPError as e:
        raise Problem(503, f"the owning service did not answer: {e!r}", headers={"Retry-After": "1"}) from e
    passed = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "location", "retry-after")}
    return Response(upstream.content, status_code=upstream.status_code, headers=passed)
