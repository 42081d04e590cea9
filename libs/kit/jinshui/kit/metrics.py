"""Prometheus metrics shared by every service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("jinshui_consumer_messages_total", "Messages handled by a consumer", ["consumer", "outcome"])
BATCH_SECONDS = Histogram("jinshui_consumer_batch_seconds", "Time to handle one fetched batch", ["consumer"])
OUTBOX_PUBLISHED = Counter("jinshui_outbox_published_total", "Outbox events published", ["service"])
OUTBOX_FAILURES = Counter("jinshui_outbox_publish_failures_total", "Failed outbox publishes", ["service"])
OUTBOX_BACKLOG = Gauge("jinshui_outbox_backlog", "Unpublished outbox rows at the last look", ["service"])
READY = Gauge("jinshui_ready", "1 when the service is ready", ["service"])
CONSUMER_PENDING = Gauge("jinshui_consumer_pending", "Messages not yet delivered to a durable consumer", ["consumer"])
CONSUMER_ACK_PENDING = Gauge("jinshui_consumer_ack_pending", "Messages delivered, not yet acknowledged", ["consumer"])
OUTBOX_OLDEST = Gauge("jinshui_outbox_oldest_seconds", "Age of the oldest unpublished outbox row", ["service"])
