"""Incidents bootstrap."""

from __future__ import annotations

from pathlib import Path

from jinshui.contracts import streams
from jinshui.incidents import handlers
from jinshui.incidents.settings import IncidentsSettings
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec


def build(settings: IncidentsSettings | None = None) -> Service:
    settings = settings or IncidentsSettings()
    svc = Service(name="incidents", settings=settings, migrations=Path(__file__).parent / "migrations")
    svc.consumer(
        ConsumerSpec(
            durable="incidents-households",
            stream=streams.REGISTRY,
            subjects=[streams.REGISTRY_HOUSEHOLD_REGISTERED + ".>"],
            handler=handlers.on_household_registered,
        )
    )
    return svc
