"""Risk bootstrap."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

from jinshui.contracts import streams
from jinshui.kit.app import Service
from jinshui.kit.consumer import ConsumerSpec
from jinshui.risk import alerts, api, copies, gauges, handlers, ledger, ledger_api, sightings, windows
from jinshui.risk.rules import DEFAULT_RULES, RuleBook
from jinshui.risk.settings import RiskSettings


def build(settings: RiskSettings | None = None) -> Service:
    settings = settings or RiskSettings()
    svc = Service(name="risk", settings=settings, migrations=Path(__file__).parent / "migrations")
    escalate_after = timedelta(seconds=settings.escalate_after_seconds)
    book = RuleBook(settings.rules_file or DEFAULT_RULES)
    book.reload()  # a service never starts on a rule file it refuses
    svc.app.state.rules = book
    rules_and_windows = partial(
        handlers.on_event,
        book=book,
        escalate_after=escalate_after,
        letting_window=timedelta(days=settings.letting_departure_window_days),
    )
    on_event = copies.following(rules_and_windows, book=book)
    visits_together = copies.visits_together(rules_and_windows, book=book)
    for durable, stream in (("risk-registry", streams.REGISTRY), ("risk-incidents", streams.INCIDENTS)):
        prefix = stream.subjects[0]
        svc.consumer(
            ConsumerSpec(
                durable=durable,
                stream=stream,
                subjects=[prefix],
                handler=on_event,
                records_per_transaction=2 * streams.RECORDS_PER_TRANSACTION,  # a batch of visits, an import chunk
                together=visits_together if durable == "risk-registry" else None,
                together_types=frozenset({copies.VISITS_RECORDED_BATCH}),
            )
        )
    svc.consumer(
        ConsumerSpec(
            durable="risk-sightings",
            batch=streams.BATCHES_PER_FETCH,
            records_per_transaction=streams.RECORDS_PER_TRANSACTION,
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
    for kind, window in (
        (ledger.REVIEW, ledger.review_due),
        (windows.LETTING, windows.letting_window_elapsed),
        (windows.MONTHLY, windows.month_check),
    ):
        svc.timer(kind, handlers.on_timer(window, book=book, escalate_after=escalate_after))

    @svc.on_start
    async def _arm_monthly_visits(s: Service) -> None:
        async with s.pool.acquire() as conn:
            await windows.arm_monthly(conn, s.clock.now())

    svc.on_metrics(gauges.refresh)
    svc.app.include_router(api.router)
    svc.app.include_router(ledger_api.router)
    return svc
