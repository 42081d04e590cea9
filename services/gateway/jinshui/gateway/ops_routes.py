"""The ops team's view: every service's readiness, version, uptime, consumer lag, outbox backlog; the DLQ."""

from __future__ import annotations

import asyncio
from typing import Annotated

import httpx
from fastapi import APIRouter

from jinshui.contracts.streams import ALL_STREAMS, DLQ
from jinshui.gateway.rbac import allowed
from jinshui.kit.app import ServiceDep
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


async def _service_status(client: httpx.AsyncClient, name: str, url: str) -> dict:
    try:
        r = await client.get(url.rstrip("/") + "/status", timeout=3)
        return r.json()
    except (httpx.HTTPError, ValueError) as e:
        return {"service": name, "ready": False, "last_error": f"did not answer: {e!r}"}


@router.get("/ops/status", summary="Health of every service, consumer lag, outbox backlog, dead letters")
async def ops_status(svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/ops/status")]):
    s = svc.settings
    client: httpx.AsyncClient = svc.app.state.http
    owners = {"registry": s.registry_url, "incidents": s.incidents_url, "risk": s.risk_url}
    answers = await asyncio.gather(*(_service_status(client, n, u) for n, u in owners.items()))
    services = [await svc.status(), *answers]
    streams: dict[str, dict] = {}
    for stream in ALL_STREAMS:
        try:
            info = await svc.js.stream_info(svc.naming.stream(stream))
            streams[stream.name] = {"messages": info.state.messages, "bytes": info.state.bytes}
        except Exception as e:
            streams[stream.name] = {"error": repr(e)}
    return {
        "ready": all(x.get("ready") for x in services),
        "services": services,
        "streams": streams,
        "dlq": streams.get(DLQ.name, {}).get("messages"),
    }
