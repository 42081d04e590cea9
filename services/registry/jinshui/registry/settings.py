from __future__ import annotations

from pydantic import Field

from jinshui.kit.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    service_name: str = "registry"
    http_port: int = 8001
    # Key rotation: stored personal data is re-sealed under the active key, this many rows per transaction.
    pii_reseal_batch: int = Field(default=200, ge=1, le=5000)
    pii_reseal_interval_seconds: float = Field(default=1.0, gt=0)
    # Once every stored value is under the active key, look again this often (for values sealed under an older key
    # after the last pass: a gateway that had not reloaded yet, INTAKE messages sealed before the change).
    pii_reseal_recheck_seconds: float = Field(default=300.0, gt=0)
    pii_keys_check_seconds: float = Field(default=1.0, gt=0)
    # Which versions of visit.recorded to publish: "1", "1,2" while consumers move over, then "2" (CONTRACTS.md).
    visit_recorded_versions: str = Field(default="1", pattern=r"^\s*[12]\s*(,\s*[12]\s*)?$")

    @property
    def visit_versions(self) -> tuple[int, ...]:
        return tuple(sorted({int(v) for v in self.visit_recorded_versions.split(",")}))

    def production_problems(self) -> list[str]:
        return self.pii_problems()
