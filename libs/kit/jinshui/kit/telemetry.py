"""Traces over OTLP, trace context in NATS headers, JSON logs that carry trace ids."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from jinshui.kit.pii import RedactingFilter

tracer = trace.get_tracer("jinshui")
_provider: TracerProvider | None = None


def setup_tracing(service_name: str, *, otlp_endpoint: str | None) -> TracerProvider:
    """A tracer provider for the service; spans are exported over OTLP/HTTP when an endpoint is set."""
    global _provider
    if _provider is not None:
        return _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # Without an exporter the API's no-op tracer stays in place: spans nobody sees cost nothing, and the
        # trace context of incoming headers still travels on.
        trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Put the current trace context (W3C traceparent) into message headers."""
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(headers or {}))


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def messaging_span(
    operation: str,
    subject: str,
    *,
    headers: Mapping[str, str] | None = None,
    kind=SpanKind.CONSUMER,
    also: list[Mapping[str, str] | None] | None = None,
) -> Iterator[trace.Span]:
    """A span named by the messaging conventions ("process registry.visit.recorded"), as the current span.

    With `headers`, the span continues the trace those headers carry; the traces of `also` (the other messages a
    span processes together with that one) are linked to it.
    """
    ctx = extract(headers) if headers is not None else None
    links = [trace.Link(trace.get_current_span(extract(h)).get_span_context()) for h in also or () if h is not None]
    with tracer.start_as_current_span(
        f"{operation} {subject}",
        context=ctx,
        kind=kind,
        links=[link for link in links if link.context.is_valid],
        attributes={
            "messaging.system": "nats",
            "messaging.operation.name": operation,
            "messaging.destination.name": subject,
        },
    ) as span:
        yield span


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the trace and span ids of the current span."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info or record.exc_text:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "taskName"}


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
