from __future__ import annotations

from jinshui.kit.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    http_port: int = 8001

    def production_problems(self) -> list[str]:
        return self.pii_problems()
