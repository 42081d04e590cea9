"""Registry bootstrap: wires settings, the intake and audit consumers and the API."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import asyncpg
from fastapi import Request

from jinshui.contracts import registry as contracts
from jinshui.contracts import streams
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.kit.keyfile import watch_keyring
from jinshui.kit.problems import problem_response
from jinshui.registry import api, areas, handlers, rekey, tags, units, upkeep
from jinshui.registry.settings import RegistrySettings

INTAKE_HANDLERS = {
    "org.jinshui.intake.visit.submitted.v1": handlers.record_visits,
    "org.jinshui.intake.arrival.submitted.v1": handlers.record_arrivals,
    "org.jinshui.intake.departure.submitted.v1": handlers.record_departures,
    "org.jinshui.intake.move.submitted.v1": handlers.record_moves,
    "org.jinshui.intake.renewal.submitted.v1": handlers.record_renewals,
}
UNTIMED_HANDLERS = {
    "org.jinshui.intake.letting.submitted.v1": handlers.record_lettings,
    "org.jinshui.intake.letting_stop.submitted.v1": handlers.record_letting_stops,
    "org.jinshui.intake.tag.submitted.v1": tags.record_tags,
    "org.jinshui.intake.tag_end.submitted.v1": tags.record_tag_ends,
}


def build(settings: RegistrySettings | None = None) -> Service:
    settings = settings or RegistrySettings()
    svc = Service(name="registry", settings=settings, migrations=Path(__file__).parent / "migrations")
    svc.app.state.keyring = settings.pii_keyring()
    watch_keyring(svc, settings, interval=settings.pii_keys_check_seconds)
    resealer = rekey.Resealer(
        svc=svc,
        batch=settings.pii_reseal_batch,
        interval=settings.pii_reseal_interval_seconds,
        recheck=settings.pii_reseal_recheck_seconds,
    )

    @svc.on_start
    async def _reseal(s: Service) -> None:
        s.spawn(resealer.run(), name="pii-reseal")

    svc.on_metrics(rekey.gauges(resealer))
    by_type = {**{t: partial(h, clock=svc.clock) for t, h in INTAKE_HANDLERS.items()}, **UNTIMED_HANDLERS}
    by_type["org.jinshui.intake.visit.submitted.v1"] = partial(
        handlers.record_visits, clock=svc.clock, publish=settings.visit_versions
    )

    async def intake(conn, event):
        handler = by_type.get(event.type)
        if handler is None:
            raise handlers.Permanent(f"the registry does not take {event.type}")
        await handler(conn, event)

    svc.consumer(
        ConsumerSpec(
            durable="registry-intake",
            batch=streams.BATCHES_PER_FETCH,
            records_per_transaction=streams.RECORDS_PER_TRANSACTION,
            together=partial(handlers.record_visit_submissions, clock=svc.clock, publish=settings.visit_versions),
            together_types=frozenset({"org.jinshui.intake.visit.submitted.v1"}),
            stream=streams.INTAKE,
            subjects=[
                streams.INTAKE_VISITS,
                contracts.INTAKE_ARRIVALS,
                contracts.INTAKE_DEPARTURES,
                contracts.INTAKE_MOVES,
                contracts.INTAKE_LETTINGS,
                contracts.INTAKE_LETTING_STOPS,
                contracts.INTAKE_RENEWALS,
                contracts.INTAKE_TAGS,
                contracts.INTAKE_TAG_ENDS,
            ],
            handler=intake,
        )
    )
    svc.consumer(
        ConsumerSpec(durable="registry-audit", stream=streams.AUDIT, subjects=["audit.>"], handler=handlers.index_audit)
    )
    svc.timer(handlers.EXPIRY, handlers.residency_expired)
    svc.timer(tags.UNTIL, tags.until_passed)
    for unstorable in (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
        svc.app.add_exception_handler(unstorable, _unstorable)
    svc.app.include_router(areas.router)
    svc.app.include_router(api.router)
    svc.app.include_router(units.router)
    svc.app.include_router(upkeep.router)
    return svc


async def _unstorable(request: Request, exc: Exception):
    """Text PostgreSQL cannot store (a NUL character): refused, and the transaction it was in rolled back."""
    reason = "a text holds a character that cannot be stored (NUL)"
    return problem_response(422, reason, instance=request.url.path, type="validation-error")
