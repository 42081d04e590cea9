from __future__ import annotations

from pydantic import Field

from jinshui.kit.settings import ServiceSettings


class IncidentsSettings(ServiceSettings):
    service_name: str = "incidents"
    http_port: int = 8002
    # A household not yet in the local copy is waited for this long (a submission's age) before rejection.
    reference_grace_seconds: float = Field(default=120.0, ge=0)
