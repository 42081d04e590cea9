"""Gauges the ops team alerts on, read from risk's own tables when Prometheus scrapes /metrics."""

from __future__ import annotations

from prometheus_client import Gauge

from jinshui.contracts.risk import AlertLevel, AlertStatus
from jinshui.kit.app import Service

UNACKNOWLEDGED = Gauge(
    "jinshui_risk_alerts_unacknowledged", "Open alerts nobody has acknowledged yet (status raised)", ["level"]
)
UNACKNOWLEDGED_OLDEST = Gauge(
    "jinshui_risk_alert_unacknowledged_oldest_seconds",
    "Age of the oldest alert nobody has acknowledged yet, by the service's clock",
    ["level"],
)


async def refresh(svc: Service) -> None:
    """Count the raised (unacknowledged) alerts per level and the age of the oldest one."""
    if svc.pool is None:
        return
    rows = await svc.pool.fetch(
        "SELECT level, count(*) AS n, min(raised_at) AS oldest FROM alerts WHERE status = $1 GROUP BY level",
        AlertStatus.raised.value,
    )
    found = {r["level"]: r for r in rows}
    now = svc.clock.now()
    for level in AlertLevel:
        row = found.get(level.value)
        UNACKNOWLEDGED.labels(level.value).set(row["n"] if row else 0)
        age = (now - row["oldest"]).total_seconds() if row else 0.0
        UNACKNOWLEDGED_OLDEST.labels(level.value).set(max(age, 0.0))
