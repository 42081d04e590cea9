"""The gateway's public API."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts import streams
from jinshui.contracts.events import MAX_BATCH, Submitter, VisitRecord, VisitsSubmitted
from jinshui.gateway.auth import authenticate, require
from jinshui.gateway.submissions import new_submission_id
from jinshui.kit import telemetry
from jinshui.kit.app import IDENTITY_NAME, IDENTITY_ROLE, IDENTITY_SUB, ServiceDep
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")

# Which role may call which endpoint: the one table the gateway enforces.
ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/v1/visits"): ("grid_worker", "grid_platform"),
    ("GET", "/v1/submissions/{submission_id}"): (
        "grid_worker",
        "grid_platform",
        "police",
        "police_platform",
        "gate_system",
        "mediator",
        "community_admin",
    ),
    ("POST", "/v1/households"): ("community_admin", "grid_worker"),
    ("GET", "/v1/households/{code}"): ("police", "grid_worker", "community_admin", "mediator"),
    ("GET", "/v1/alerts"): ("police",),
    ("GET", "/v1/alerts/stream"): ("police",),
}


def allowed(method: str, path: str):
    return Depends(require(*ROLES[(method, path)]))


class VisitBatch(BaseModel):
    """Up to 500 household visits from one grid worker or the grid platform."""

    model_config = ConfigDict(extra="forbid")
    visits: list[VisitRecord] = Field(min_length=1, max_length=MAX_BATCH)


class Accepted(BaseModel):
    submission_id: str
    status: str
    records: int


@router.post("/visits", status_code=202, response_model=Accepted)
async def submit_visits(
    batch: VisitBatch,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/visits")],
):
    submission_id = new_submission_id()
    data = VisitsSubmitted(
        submission_id=submission_id,
        submitter=Submitter(sub=caller.sub, role=caller.role),
        received_at=svc.clock.now(),
        records=batch.visits,
    )
    try:
        state = await svc.app.state.submissions.submit(
            caller=caller,
            kind="visits",
            event_type="org.jinshui.intake.visit.submitted.v1",
            subject=streams.INTAKE_VISITS,
            data=data,
            received_at=data.received_at,
        )
    except Exception as e:
        raise Problem(503, f"the submission could not be made durable: {e!r}", headers={"Retry-After": "1"}) from e
    return JSONResponse(
        Accepted(submission_id=submission_id, status=state["status"], records=state["records"]).model_dump(),
        status_code=202,
        headers={"Location": f"/v1/submissions/{submission_id}"},
    )


@router.get("/submissions/{submission_id}")
async def submission(
    submission_id: str,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/submissions/{submission_id}")],
):
    state = await svc.app.state.submissions.get(submission_id)
    if state is None or state.get("submitter") != caller.sub:
        raise Problem(404, f"no submission {submission_id} of yours")
    return state


async def forward(request: Request, svc, caller: Identity, base_url: str, path: str) -> Response:
    """Pass a call on to the owning service with the caller's identity and the trace context."""
    headers = telemetry.inject({IDENTITY_SUB: caller.sub, IDENTITY_ROLE: caller.role, IDENTITY_NAME: caller.name})
    if ct := request.headers.get("content-type"):
        headers["content-type"] = ct
    client: httpx.AsyncClient = svc.app.state.http
    try:
        upstream = await client.request(
            request.method,
            base_url.rstrip("/") + path,
            params=request.query_params,
            content=await request.body(),
            headers=headers,
        )
    except httpx.HTTPError as e:
        raise Problem(503, f"the owning service did not answer: {e!r}", headers={"Retry-After": "1"}) from e
    passed = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "location", "retry-after")}
    return Response(upstream.content, status_code=upstream.status_code, headers=passed)


@router.post("/households", status_code=201)
async def register_household(
    request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("POST", "/v1/households")]
):
    return await forward(request, svc, caller, svc.settings.registry_url, "/v1/households")


@router.get("/households/{code}")
async def household(
    code: str,
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/households/{code}")],
):
    return await forward(request, svc, caller, svc.settings.registry_url, f"/v1/households/{code}")


@router.get("/alerts")
async def alerts(request: Request, svc: ServiceDep, caller: Annotated[Identity, allowed("GET", "/v1/alerts")]):
    return await forward(request, svc, caller, svc.settings.risk_url, "/v1/alerts")


@router.get("/alerts/stream")
async def alert_stream(
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("GET", "/v1/alerts/stream")],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
):
    feed = getattr(svc.app.state, "feed", None)
    if feed is None:
        raise Problem(503, "the alert feed is not ready yet", headers={"Retry-After": "1"})
    after: int | None = None
    if last_event_id:
        if not last_event_id.strip().isdigit():
            raise Problem(400, "Last-Event-ID must be an event id this feed sent (a number)")
        after = int(last_event_id)
    return StreamingResponse(
        feed.events(after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


__all__ = ["ROLES", "authenticate", "router"]
