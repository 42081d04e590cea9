from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from jinshui.kit.settings import ServiceSettings
from jinshui.kit.tokens import ALGORITHMS, check_algorithms


class GatewaySettings(ServiceSettings):
    uses_database: ClassVar[bool] = False
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
    # The door: idempotency keys are kept a day; a crashed claim frees itself after the lease.
    idempotency_ttl_seconds: int = 24 * 3600
    idempotency_lease_seconds: float = Field(default=30.0, gt=0)
    prefer_wait_max_seconds: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Requests per second and burst, per caller, by role (JSON in RATE_LIMITS); 0 means unlimited.
    rate_limits: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "grid_platform": (200.0, 400.0),
            "police_platform": (200.0, 400.0),
            "gate_system": (500.0, 1000.0),
        }
    )
    rate_limit_default: tuple[float, float] = (50.0, 100.0)
    # Identity: the deployment's identity provider. Without JWKS_URL (development and tests only) tokens are
    # verified against the signing key under JINSHUI_HOME, the one `jinshui token` signs with.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # JSON list or comma-separated, e.g. "RS256,ES256"; public-key algorithms only.
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(ALGORITHMS))
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_seconds: float = Field(default=300, gt=0)

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [a.strip() for a in text.split(",") if a.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _public_key_algorithms(cls, value: list[str]) -> list[str]:
        return check_algorithms(value)

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("JWKS_URL must be an http(s) URL")
        return value or None

    @model_validator(mode="after")
    def _issuer_and_audience_with_jwks(self) -> GatewaySettings:
        if self.jwks_url and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("JWKS_URL is set: JWT_ISSUER and JWT_AUDIENCE must be set too")
        return self

    def production_problems(self) -> list[str]:
        problems = []
        if not self.jwks_url:
            problems.append("JWKS_URL must name the identity provider's keys (development tokens are refused)")
        elif not self.jwks_url.startswith("https://"):
            problems.append("JWKS_URL must be https")
        problems.extend(self.pii_problems())
        return problems
