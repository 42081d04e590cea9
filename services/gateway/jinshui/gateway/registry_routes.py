"""Registry endpoints at the door: forwarded to the registry, which owns the data and filters to scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from jinshui.gateway.proxy import forward
from jinshui.gateway.rbac import allowed
from jinshui.kit.app import ServiceDep
from jinshui.kit.tokens import Identity

router = APIRouter(prefix="/v1")


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
