from __future__ import annotations

from pathlib import Path

from pydantic import Field

from jinshui.kit.settings import ServiceSettings


class RiskSettings(ServiceSettings):
    service_name: str = "risk"
    http_port: int = 8003
    # A HIGH alert nobody acknowledges within this time escalates.
    escalate_after_seconds: float = Field(default=300, gt=0)
    # A sighting later than now by more than this is refused (gate clocks drift a little).
    sighting_future_tolerance_seconds: float = Field(default=300, ge=0)
    # Rule 3: the tenants of a stopped letting still resident this long after it stopped get a departure check.
    letting_departure_window_days: float = Field(default=7, gt=0)
    # The rules file (YAML); the one shipped with the service unless set.
    rules_file: Path | None = None
