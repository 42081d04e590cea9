"""The household card, composed at the door (DESIGN: the gateway is the only door; each service owns its data):
the registry's file, with the household's open incidents from incidents and its risk level from risk. Each
joint part is asked for with a short timeout and said `unavailable` when its service does not answer in time, so
that the card always answers with the registry's part."""

from __future__ import annotations

import asyncio
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from jinshui.contracts.incidents import IncidentStatus
from jinshui.gateway.rbac import ROLES
from jinshui.kit import telemetry
from jinshui.kit.app import IDENTITY_NAME, IDENTITY_ROLE, IDENTITY_SUB
from jinshui.kit.tokens import Identity

PART_TIMEOUT = 1.5  # seconds: a card a person waits for is not held up by a slow neighbour
OPEN = [s.value for s in IncidentStatus if s is not IncidentStatus.closed]
PartStatus = Literal["available", "unavailable", "not_shown"]


class IncidentsPart(BaseModel):
    status: PartStatus = Field(
        description="`unavailable`: incidents did not answer in time; `not_shown`: not for your role"
    )
    open: list[dict[str, Any]] = Field(default_factory=list, description="the household's incidents not yet closed")
    more: bool = False


class RiskPart(BaseModel):
    status: PartStatus = Field(description="`unavailable`: risk did not answer in time; `not_shown`: not for your role")
    level: str | None = Field(
        default=None, description="the household's risk level; null when risk knows nothing of it"
    )
    score: float | None = None
    open_tasks: int | None = None
    open_alerts: int | None = None


class HouseholdCard(BaseModel):
    """The registry's file of the household (its fields as the registry gives them), with the joint parts."""

    model_config = ConfigDict(extra="allow")
    code: str
    incidents: IncidentsPart
    risk: RiskPart


async def compose(svc, caller: Identity, registry_answer: Response) -> Response:
    """The registry's answer with the joint parts added (an answer other than 200 passes as it is)."""
    if registry_answer.status_code != 200:
        return registry_answer
    card = orjson.loads(registry_answer.body)
    code = card.get("merged_into") or card["code"]
    incidents, risk = await asyncio.gather(_incidents(svc, caller, code), _risk(svc, caller, code))
    card["incidents"], card["risk"] = incidents.model_dump(), risk.model_dump()
    return Response(orjson.dumps(card), media_type="application/json")


def _may(caller: Identity, method: str, path: str) -> bool:
    return caller.role in ROLES[(method, path)]


async def _get(svc, caller: Identity, base_url: str, path: str, params=None) -> httpx.Response | None:
    headers = telemetry.inject({IDENTITY_SUB: caller.sub, IDENTITY_ROLE: caller.role, IDENTITY_NAME: caller.name})
    client: httpx.AsyncClient = svc.app.state.http
    try:
        r = await client.get(base_url.rstrip("/") + path, params=params, headers=headers, timeout=PART_TIMEOUT)
    except httpx.HTTPError:
        return None
    return None if r.status_code >= 500 else r


async def _incidents(svc, caller: Identity, code: str) -> IncidentsPart:
    if not _may(caller, "GET", "/v1/incidents"):
        return IncidentsPart(status="not_shown")
    params = [("household_code", code), ("limit", "50"), *(("status", s) for s in OPEN)]
    r = await _get(svc, caller, svc.settings.incidents_url, "/v1/incidents", params)
    if r is None or r.status_code != 200:
        return IncidentsPart(status="unavailable")
    page = r.json()
    return IncidentsPart(status="available", open=page["items"], more=page.get("next_cursor") is not None)


async def _risk(svc, caller: Identity, code: str) -> RiskPart:
    if not _may(caller, "GET", "/v1/profiles/households/{code}"):
        return RiskPart(status="not_shown")
    r = await _get(svc, caller, svc.settings.risk_url, f"/v1/profiles/households/{quote(code, safe='')}")
    if r is None or r.status_code not in (200, 404):
        return RiskPart(status="unavailable")
    if r.status_code == 404:  # nothing known to risk yet (or nothing in the caller's scope)
        return RiskPart(status="available")
    p = r.json()
    open_alerts = sum(1 for a in p.get("alerts", []) if a.get("status") in ("raised", "acknowledged"))
    return RiskPart(
        status="available",
        level=p.get("level"),
        score=p.get("score"),
        open_tasks=len(p.get("open_tasks", [])),
        open_alerts=open_alerts,
    )
