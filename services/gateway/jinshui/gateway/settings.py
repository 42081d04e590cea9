from __future__ import annotations

from pydantic import Field

from jinshui.kit.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8000
    registry_url: str = "http://127.0.0.1:8001"
    incidents_url: str = "http://127.0.0.1:8002"
    risk_url: str = "http://127.0.0.1:8003"
    # The alert feed: how many recent alerts each gateway keeps for resuming clients.
    feed_buffer: int = Field(default=10_000, ge=10)
    feed_client_queue: int = Field(default=1_000, ge=1)
    feed_heartbeat_seconds: float = Field(default=15.0, gt=0)
    submissions_ttl_seconds: int = 7 * 24 * 3600
