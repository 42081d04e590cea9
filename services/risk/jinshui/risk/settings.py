from __future__ import annotations

from jinshui.kit.settings import ServiceSettings


class RiskSettings(ServiceSettings):
    service_name: str = "risk"
    http_port: int = 8003
