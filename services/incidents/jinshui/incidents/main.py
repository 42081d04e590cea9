"""Incidents bootstrap: the intake and registry consumers, the deadline timers, the API."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from jinshui.contracts import streams
from jinshui.contracts.incidents import (
    INTAKE_POLICE_CALLS,
    INTAKE_REPORTS,
    PoliceCallsSubmitted,
    ReportsSubmitted,
)
from jinshui.incidents import addresses, api, copies, deadlines, handlers, hazards, rules
from jinshui.incidents.settings import IncidentsSettings
from jinshui.kit import scope
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec, Permanent


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
    svc.consumer(
        ConsumerSpec(
            durable="incidents-registry-copies",
            stream=streams.REGISTRY,
            subjects=copies.SUBJECTS,
            handler=copies.on_registry,
        )
    )
    svc.consumer(
        ConsumerSpec(
            durable="incidents-assignments", stream=streams.REGISTRY, subjects=scope.SUBJECTS, handler=scope.keep
        )
    )
    intake = partial(handlers.take_in_batch, clock=svc.clock, reference_grace_seconds=settings.reference_grace_seconds)
    by_type = {
        "org.jinshui.intake.police_call.submitted.v1": partial(
            intake, model=PoliceCallsSubmitted, to_source=handlers.police_call_source
        ),
        "org.jinshui.intake.report.submitted.v1": partial(
            intake, model=ReportsSubmitted, to_source=handlers.report_source
        ),
    }

    async def on_intake(conn, event):
        handler = by_type.get(event.type)
        if handler is None:
            raise Permanent(f"incidents takes no {event.type} from INTAKE")
        await handler(conn, event)

    svc.consumer(
        ConsumerSpec(
            durable="incidents-intake",
            batch=streams.BATCHES_PER_FETCH,
            records_per_transaction=streams.RECORDS_PER_TRANSACTION,
            stream=streams.INTAKE,
            subjects=[INTAKE_POLICE_CALLS, INTAKE_REPORTS],
            handler=on_intake,
        )
    )
    svc.consumer(
        ConsumerSpec(
            durable="incidents-visits",
            stream=streams.REGISTRY,
            records_per_transaction=2 * streams.RECORDS_PER_TRANSACTION,  # most visits need nothing here
            subjects=handlers.VISIT_SUBJECTS,  # visit.recorded v1 and v2 (upgraded: see proto/CONTRACTS.md)
            handler=handlers.on_visit_recorded,
        )
    )

    svc.timer(rules.TIMER_KIND, deadlines.fire)
    svc.timer(rules.RECTIFICATION_TIMER, hazards.fire)
    svc.on_start(backfill_numbers_keys)

    svc.app.include_router(api.router)
    return svc


async def backfill_numbers_keys(svc: Service) -> None:
    """Households copied before addresses were resolved by numbers get their key."""
    rows = await svc.pool.fetch("SELECT code, address FROM households WHERE numbers_key IS NULL")
    if rows:
        await svc.pool.executemany(
            "UPDATE households SET numbers_key = $2 WHERE code = $1",
            [(r["code"], addresses.numbers_key(r["address"])) for r in rows],
        )
