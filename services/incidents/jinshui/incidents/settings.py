from __future__ import annotations

from jinshui.kit.settings import ServiceSettings


class IncidentsSettings(ServiceSettings):
    service_name: str = "incidents"
    http_port: int = 8002
