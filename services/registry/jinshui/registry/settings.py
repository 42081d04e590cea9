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
    # What tells of recorded visits (proto/CONTRACTS.md): "batch", one visits.recorded per beat of a submission (the
    # default); "1" / "2", one visit.recorded v1 / v2 per visit; several, comma-separated, while consumers move over.
    visit_recorded_versions: str = Field(default="batch", pattern=r"^\s*(1|2|batch)\s*(,\s*(1|2|batch)\s*){0,2}$")

    @property
    def visit_versions(self) -> frozenset[str]:
        return frozenset(v.strip() for v in self.visit_recorded_versions.split(","))

    def production_problems(self) -> list[str]:
        return self.pii_problems()
