from __future__ import annotations

from pydantic import Field

from jinshui.kit.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    http_port: int = 8001
    # Key rotation: stored personal data is re-sealed under the active key, this many rows per transaction.
    pii_reseal_batch: int = Field(default=200, ge=1, le=5000)
    pii_reseal_interval_seconds: float = Field(default=1.0, gt=0)
    pii_keys_check_seconds: float = Field(default=1.0, gt=0)

    def production_problems(self) -> list[str]:
        return self.pii_problems()
