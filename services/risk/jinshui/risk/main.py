"""Risk bootstrap."""

from __future__ import annotations

from pathlib import Path

from jinshui.contracts import streams
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.risk import api, handlers
from jinshui.risk.settings import RiskSettings


def build(settings: RiskSettings | None = None) -> Service:
    settings = settings or RiskSettings()
    svc = Service(name="risk", settings=settings, migrations=Path(__file__).parent / "migrations")
    svc.consumer(
        ConsumerSpec(
            durable="risk-visits",
            stream=streams.REGISTRY,
            subjects=[streams.REGISTRY_VISIT_RECORDED + ".>"],
            handler=handlers.on_visit_recorded,
        )
    )
    svc.app.include_router(api.router)
    return svc
