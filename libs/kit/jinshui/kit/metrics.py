"""Prometheus metrics shared by every service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("jinshui_consumer_messages_total", "Messages handled by a consumer", ["consumer", "outcome"])
BATCH_SECONDS = Histogram("jinshui_consumer_batch_seconds", "Time to handle one fetched batch", ["consumer"])
OUTBOX_PUBLISHED = Counter("jinshui_outbox_published_total", "Outbox events published", ["service"])
OUTBOX_FAILURES = Counter("jinshui_outbox_publish_failures_total", "Failed outbox publishes", ["service"])
OUTBOX_BACKLOG = Gauge("jinshui_outbox_backlog", "Unpublished outbox rows at the last look", ["service"])
READY = Gauge("jinshui_ready", "1 when the service is ready", ["service"])
