"""Registry bootstrap: wires settings, the intake consumer and the API."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from jinshui.contracts import streams
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.registry import api, handlers
from jinshui.registry.settings import RegistrySettings


def build(settings: RegistrySettings | None = None) -> Service:
    settings = settings or RegistrySettings()
    svc = Service(name="registry", settings=settings, migrations=Path(__file__).parent / "migrations")
    svc.consumer(
        ConsumerSpec(
            durable="registry-intake",
            stream=streams.INTAKE,
            subjects=[streams.INTAKE_VISITS],
            handler=partial(handlers.record_visits, clock=svc.clock),
        )
    )
    svc.app.include_router(api.router)
    return svc
