"""RFC 9457 problem details for every error a service answers."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://jinshui.org/problems/"


class Problem(Exception):
    """Raise to answer with a problem; `extra` members are added to the body."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.type, self.title = status, detail, type, title
        self.headers, self.extra = headers, extra


def problem_response(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    type: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + type if type else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def field_path(loc: tuple | list) -> str:
    """('body', 'visits', 0, 'household_code') -> 'body.visits[0].household_code'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_errors(errors: list[dict]) -> list[dict[str, str]]:
    out = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            reason = f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
            loc = ["body"]
        else:
            reason = err.get("msg", "invalid")
        out.append({"field": field_path(loc), "reason": reason})
    return out


def install(app: FastAPI) -> None:
    """Answer every error as problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            instance=request.url.path,
            type=exc.type,
            title=exc.title,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return problem_response(
            422,
            detail or "the request is not valid",
            instance=request.url.path,
            type="validation-error",
            title="Your request is not valid",
            errors=errors,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A broker or database that is away or full is a 503 to retry, never a lost answer; anything else is
        # our fault, answered without internals (they are in the log, with the trace id).
        if _is_unavailable(exc):
            log.warning("dependency unavailable", extra={"path": request.url.path, "error": repr(exc)})
            return problem_response(
                503,
                "a service this request needs is unavailable or full; try again shortly",
                instance=request.url.path,
                type="unavailable",
                headers={"Retry-After": "1"},
            )
        log.exception("unexpected error", extra={"path": request.url.path})
        return problem_response(500, "an unexpected error; it has been logged", instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        return problem_response(
            exc.status_code, detail, instance=request.url.path, headers=getattr(exc, "headers", None)
        )


def _is_unavailable(exc: BaseException) -> bool:
    import asyncpg
    import nats.errors
    import nats.js.errors

    unavailable = (
        nats.errors.Error,
        nats.js.errors.Error,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.TooManyConnectionsError,
        ConnectionError,
        asyncio.TimeoutError,
    )
    return isinstance(exc, unavailable)
