"""Bearer tokens: verified against the identity provider's JWKS, or in the embedded default against the signing key
under JINSHUI_HOME, which also issues development tokens."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROLES = (
    "grid_worker",
    "police",
    "mediator",
    "community_admin",
    "ops",
    "grid_platform",
    "police_platform",
    "gate_system",
)
DEV_ISSUER = "jinshui-dev"
AUDIENCE = "jinshui"
# Public-key algorithms only: accepting an HMAC algorithm would let a public key be used as a shared secret.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
ALGORITHMS = ["RS256", "ES256"]
DEV_ALGORITHMS = ["ES256"]
DEFAULT_LEEWAY_SECONDS = 30
MAX_TOKEN_LENGTH = 16_384


@dataclass(frozen=True)
class Identity:
    sub: str
    role: str
    name: str = ""


class InvalidToken(Exception):
    """The token was refused; the message says why."""


class KeysUnavailable(Exception):
    """The identity provider's keys could not be fetched: not the caller's fault."""


def signing_key_path(home: Path) -> Path:
    return Path(home) / "keys" / "token-signing.pem"


def load_or_create_signing_key(home: Path) -> ec.EllipticCurvePrivateKey:
    """The development signing key, made on first use (P-256, file mode 0600)."""
    path = signing_key_path(home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(f".{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # atomic and never overwrites a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def issue_token(*, home: Path, role: str, sub: str | None = None, name: str = "", ttl_seconds: int = 12 * 3600) -> str:
    """A development token signed with the key under `home`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "aud": AUDIENCE,
        "sub": sub or f"{role}-1",
        "role": role,
        "name": name,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, load_or_create_signing_key(home), algorithm="ES256")


def check_algorithms(algorithms: Sequence[str]) -> list[str]:
    """The algorithms, refused unless all are public-key signature algorithms."""
    algorithms = list(algorithms)
    if not algorithms:
        raise ValueError("at least one JWT algorithm is needed")
    wrong = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if wrong:
        raise ValueError(
            f"JWT algorithms {', '.join(map(repr, wrong))} are not accepted; "
            f"use public-key algorithms ({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
        )
    return algorithms


class TokenVerifier:
    """Verifies bearer tokens against one public key (the embedded default) or a JWKS URL (an identity provider)."""

    def __init__(
        self,
        *,
        public_key: Any = None,
        jwks_url: str | None = None,
        issuer: str = DEV_ISSUER,
        audience: str = AUDIENCE,
        algorithms: Sequence[str] = DEV_ALGORITHMS,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
        jwks_cache_seconds: float = 300,
        jwks_timeout_seconds: float = 5,
    ) -> None:
        if (public_key is None) == (jwks_url is None):
            raise ValueError("give either a public key or a JWKS URL")
        if not issuer or not audience:
            raise ValueError("an issuer and an audience are needed")
        self._key = public_key
        # The JWK set is cached and expires; keys are not cached on their own, so a key the provider withdraws
        # stops being trusted when the cache expires. An unknown `kid` forces a refetch at most every 30 s.
        self._jwks = (
            jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=jwks_cache_seconds, timeout=jwks_timeout_seconds)
            if jwks_url
            else None
        )
        self._issuer, self._audience = issuer, audience
        self._algorithms = check_algorithms(algorithms)
        self._leeway = leeway_seconds

    @classmethod
    def for_development(cls, home: Path, *, leeway_seconds: float = DEFAULT_LEEWAY_SECONDS) -> TokenVerifier:
        """The embedded default: tokens signed with the key under `home` (made on first use)."""
        return cls(public_key=load_or_create_signing_key(home).public_key(), leeway_seconds=leeway_seconds)

    @classmethod
    def from_jwks(
        cls,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = ALGORITHMS,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
        cache_seconds: float = 300,
    ) -> TokenVerifier:
        """Tokens of an identity provider, verified against the keys its JWKS URL publishes."""
        return cls(
            jwks_url=jwks_url,
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            leeway_seconds=leeway_seconds,
            jwks_cache_seconds=cache_seconds,
        )

    def _signing_key(self, header: dict[str, Any]) -> Any:
        if self._jwks is None:
            return self._key
        kid = header.get("kid")
        if not kid or not isinstance(kid, str):
            raise InvalidToken("the token does not name its signing key (no kid)")
        try:
            return self._jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as e:
            raise KeysUnavailable(f"the identity provider's keys could not be fetched: {e}") from e
        except jwt.PyJWKClientError as e:
            if str(e).startswith("Unable to find a signing key"):
                raise InvalidToken(
                    f"the token's signing key {kid[:64]!r} is not one the identity provider publishes"
                ) from e
            raise KeysUnavailable(f"the identity provider's keys could not be read: {e}") from e
        except jwt.PyJWTError as e:
            raise KeysUnavailable(f"the identity provider's keys could not be read: {e}") from e

    def verify(self, token: str) -> Identity:
        """The caller the token names, or InvalidToken saying why not (KeysUnavailable when the JWKS is down)."""
        token = (token or "").strip()
        if not token:
            raise InvalidToken("a bearer token is required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken("the token is not a well-formed JWT") from e
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise InvalidToken(
                f"the token's algorithm {str(alg)[:16]!r} is not accepted (accepted: {', '.join(self._algorithms)})"
            )
        key = self._signing_key(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as e:
            raise InvalidToken("the token has expired") from e
        except jwt.ImmatureSignatureError as e:
            raise InvalidToken("the token is not yet valid") from e
        except jwt.InvalidIssuerError as e:
            raise InvalidToken("the token's issuer is not trusted") from e
        except jwt.InvalidAudienceError as e:
            raise InvalidToken("the token is not meant for this audience") from e
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"the token lacks the {e.claim!r} claim") from e
        except jwt.InvalidSignatureError as e:
            raise InvalidToken("the token is not valid: its signature does not match") from e
        except jwt.PyJWTError as e:
            raise InvalidToken(f"the token is not valid: {e}") from e
        sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name")
        if not isinstance(sub, str) or not sub.strip():
            raise InvalidToken("the token's subject is empty")
        if role is None:
            raise InvalidToken("the token carries no role")
        if role not in ROLES:
            raise InvalidToken(f"the token's role is not one of {', '.join(ROLES)}")
        # `grids` / `beat` claims are ignored on purpose: scope comes from registry assignments.
        return Identity(sub=sub, role=role, name=name if isinstance(name, str) else "")
