"""The gateway's public API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts import streams
from jinshui.contracts.events import MAX_BATCH, Submitter, VisitRecord, VisitsSubmitted
from jinshui.gateway.idempotency import run_idempotent
from jinshui.gateway.rbac import ROLES, allowed
from jinshui.gateway.submissions import new_submission_id
from jinshui.kit.app import ServiceDep
from jinshui.kit.pii import redact_payload
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


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
    request: Request,
    svc: ServiceDep,
    caller: Annotated[Identity, allowed("POST", "/v1/visits")],
    prefer: Annotated[str | None, Header()] = None,
):
    return await accept_submission(
        request,
        svc,
        caller,
        prefer,
        kind="visits",
        event_type="org.jinshui.intake.visit.submitted.v1",
        subject=streams.INTAKE_VISITS,
        make=lambda keyring, **head: VisitsSubmitted(**head, records=batch.visits),
    )


def prefer_wait(prefer: str | None, cap: float) -> float | None:
    """`Prefer: wait=N` (RFC 7240): how long the caller will wait for the outcome, capped."""
    if not prefer:
        return None
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return max(0.0, min(float(value.strip().strip('"')), cap))
            except ValueError:
                raise Problem(400, f"Prefer: wait must be a number of seconds (got {value!r})") from None
    return None


async def accept_submission(
    request: Request, svc, caller: Identity, prefer: str | None, *, kind: str, event_type: str, subject: str, make
) -> Response:
    """The whole submitting path: idempotency key, `make(submission_id=, submitter=, received_at=, keyring=)`
    builds the contract, one message once durable (202), or the outcome within `Prefer: wait`."""

    async def accept() -> Response:
        data = make(
            submission_id=new_submission_id(getattr(request.state, "idempotency_id", None)),
            submitter=Submitter(sub=caller.sub, role=caller.role),
            received_at=svc.clock.now(),
            keyring=getattr(svc.app.state, "keyring", None),
        )
        # An ID number or a mobile typed into free text (a note, a description) never leaves the door in clear.
        # The contract was validated as it was built; the masked payload goes out as it is (no second pass).
        payload = redact_payload(data.model_dump(mode="json"))
        wait = prefer_wait(prefer, svc.settings.prefer_wait_max_seconds)
        return await submit(
            svc, caller=caller, kind=kind, event_type=event_type, subject=subject, data=payload, wait=wait
        )

    return await run_idempotent(svc.app.state.idempotency, request, caller, accept)


async def submit(svc, *, caller: Identity, kind: str, event_type: str, subject: str, data: dict, wait: float | None):
    """Accept a submission (its contract as JSON-ready data) once JetStream has it: 202, or its outcome in time."""
    submissions = svc.app.state.submissions
    submission_id = data["submission_id"]
    try:
        state = await submissions.submit(caller=caller, kind=kind, event_type=event_type, subject=subject, data=data)
    except Exception as e:
        raise Problem(503, f"the submission could not be made durable: {e!r}", headers={"Retry-After": "1"}) from e
    location = {"Location": f"/v1/submissions/{submission_id}"}
    if wait:
        settled = await submissions.wait_settled(submission_id, timeout=wait)
        if settled is not None:
            return JSONResponse(settled, status_code=200, headers={**location, "Preference-Applied": f"wait={wait:g}"})
    body = Accepted(submission_id=submission_id, status=state["status"], records=state["records"])
    return JSONResponse(body.model_dump(), status_code=202, headers=location)


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
        feed.events(after, scope=lambda: feed.book.scope_of(caller)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


__all__ = ["ROLES", "router"]
