"""The desk console (`/desk`) and the API docs (`/docs`): static pages served by the gateway, nothing fetched
from elsewhere. Both are public HTML; the desk keeps the officer's token in the browser and sends it to /v1."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse

from jinshui.gateway import openapi_docs
from jinshui.kit.problems import Problem

ASSETS = Path(__file__).parent / "desk"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
# Only what the pages load from here: no inline script, no other origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Cache-Control": "no-cache", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
SERVED = {p.name: p for p in ASSETS.iterdir() if p.suffix in MEDIA} if ASSETS.is_dir() else {}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = SERVED.get(name)
    if path is None:
        raise Problem(404, f"no desk asset {name}")
    return FileResponse(path, media_type=MEDIA[path.suffix], headers=HEADERS)


@router.get("/desk")
async def desk() -> FileResponse:
    return _file("index.html")


@router.get("/desk/")
async def desk_slash() -> RedirectResponse:
    return RedirectResponse("/desk", status_code=308)


@router.get("/desk/static/{name}")
async def desk_asset(name: str) -> FileResponse:
    return _file(name)


@router.get("/docs")
async def docs() -> FileResponse:
    """The API reference, rendered in the browser from /openapi.json (FastAPI's Swagger UI loads from a CDN)."""
    return _file("docs.html")


def install(app: FastAPI) -> None:
    """Serve the desk, and replace FastAPI's CDN-backed /docs and /redoc with the self-contained reference to the
    completed OpenAPI."""
    cdn_pages = ("/docs", "/docs/oauth2-redirect", "/redoc")
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in cdn_pages]
    app.include_router(router)
    openapi_docs.install(app)
