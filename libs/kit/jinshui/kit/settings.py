"""Settings from the environment, one class per service, refusing unsafe defaults outside development."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jinshui.kit.pii import Keyring, PersonalDataKeysError

Environment = Literal["development", "test", "production"]

DEV_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/jinshui"
DEV_NATS_URL = "nats://127.0.0.1:4222"


class ServiceSettings(BaseSettings):
    """What every service reads. Environment variables are the upper-case field names."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)
    # A service without tables (the gateway) needs no DATABASE_URL, in production either.
    uses_database: ClassVar[bool] = True

    service_name: str = "jinshui"
    jinshui_env: Environment = "development"
    # Comma-separated server list, e.g. "nats://a:4222,nats://b:4222".
    nats_url: str = DEV_NATS_URL
    nats_user: str | None = None
    nats_password: str | None = None
    database_url: str = DEV_DATABASE_URL
    # Prefix for stream names and subjects, so that tests can share one NATS server.
    jinshui_stream_prefix: str = ""
    # Replicas of each stream the service provisions: 1 on one server, 3 on a three-server cluster.
    jinshui_stream_replicas: int = Field(default=1, ge=1, le=5)
    # Where the embedded default keeps its data and development keys.
    jinshui_home: Path = Path(".jinshui")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # "wall", or "adjustable": wall time plus an offset read from jinshui_clock_file (dev and tests only).
    jinshui_clock: Literal["wall", "adjustable"] = "wall"
    jinshui_clock_file: Path | None = None
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None
    # Consumer tuning.
    consumer_batch: int = Field(default=256, ge=1, le=1000)
    consumer_max_deliver: int = Field(default=20, ge=1)
    consumer_max_ack_pending: int = Field(default=2000, ge=1)
    # Personal-data keys (the gateway and the registry): a JSON document, or a secrets file holding one.
    jinshui_pii_keys: SecretStr | None = None
    jinshui_pii_keys_file: Path | None = None

    @property
    def nats_servers(self) -> list[str]:
        return [s.strip() for s in self.nats_url.split(",") if s.strip()]

    @property
    def is_production(self) -> bool:
        return self.jinshui_env == "production"

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> ServiceSettings:
        if self.is_production:
            problems = []
            if self.uses_database and self.database_url == DEV_DATABASE_URL:
                problems.append("DATABASE_URL is the development default")
            if self.jinshui_clock != "wall":
                problems.append("JINSHUI_CLOCK must be 'wall' in production")
            problems.extend(self.production_problems())
            if problems:
                raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """Service-specific unsafe defaults; overridden by subclasses."""
        return []

    def pii_problems(self) -> list[str]:
        """Why the personal-data keys are not fit for production (for services that hold them)."""
        if not (self.jinshui_pii_keys or self.jinshui_pii_keys_file):
            return ["JINSHUI_PII_KEYS or JINSHUI_PII_KEYS_FILE must give the personal-data keys"]
        try:
            self.pii_keyring()
        except PersonalDataKeysError as e:
            return [f"the personal-data keys are not usable: {e}"]
        return []

    def pii_keyring(self) -> Keyring:
        """The personal-data keys: as configured, or in development and tests the ones kept under JINSHUI_HOME."""
        return Keyring.load(
            home=self.jinshui_home,
            environment=self.jinshui_env,
            keys_json=self.jinshui_pii_keys.get_secret_value() if self.jinshui_pii_keys else None,
            keys_file=self.jinshui_pii_keys_file,
        )
