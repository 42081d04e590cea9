"""Risk bootstrap."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

from jinshui.contracts import streams
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.risk import alerts, api, handlers, sightings
from jinshui.risk.settings import RiskSettings


def build(settings: RiskSettings | None = None) -> Service:
    settings = settings or RiskSettings()
    svc = Service(name="risk", settings=settings, migrations=Path(__file__).parent / "migrations")
    escalate_after = timedelta(seconds=settings.escalate_after_seconds)
    svc.consumer(
        ConsumerSpec(
            durable="risk-visits",
            stream=streams.REGISTRY,
            subjects=[streams.REGISTRY_VISIT_RECORDED + ".>"],
            handler=partial(handlers.on_visit_recorded, escalate_after=escalate_after),
        )
    )
    svc.consumer(
        ConsumerSpec(
            durable="risk-sightings",
            stream=streams.SIGHTINGS,
            subjects=[streams.SIGHTINGS_SUBMITTED],
            handler=partial(
                sightings.on_sightings,
                index=sightings.WatchIndex(),
                clock=svc.clock,
                escalate_after=escalate_after,
                future_tolerance=timedelta(seconds=settings.sighting_future_tolerance_seconds),
            ),
        )
    )
    svc.timer(alerts.ESCALATION, alerts.escalate)
    svc.app.include_router(api.router)
    return svc
