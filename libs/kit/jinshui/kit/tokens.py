"""Bearer tokens: the embedded default's signing key under JINSHUI_HOME, issuing and verifying JWTs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

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
ALGORITHMS = ["ES256", "RS256"]


@dataclass(frozen=True)
class Identity:
    sub: str
    role: str
    name: str = ""


class InvalidToken(Exception):
    """The token was refused; the message says why."""


def signing_key_path(home: Path) -> Path:
    return Path(home) / "keys" / "token-signing.pem"


def load_or_create_signing_key(home: Path) -> ec.EllipticCurvePrivateKey:
    """The development signing key, made on first use (P-256, file mode 0600)."""
    path = signing_key_path(home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
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


class TokenVerifier:
    """Verifies bearer tokens against a public key (JWKS support comes with the gateway's identity work)."""

    def __init__(self, *, public_key, issuer: str = DEV_ISSUER, audience: str = AUDIENCE) -> None:
        self._key = public_key
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def for_development(cls, home: Path) -> TokenVerifier:
        return cls(public_key=load_or_create_signing_key(home).public_key())

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=ALGORITHMS,
                issuer=self._issuer,
                audience=self._audience,
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
        except jwt.PyJWTError as e:
            raise InvalidToken(f"the token is not valid: {e}") from e
        role = claims.get("role")
        if role not in ROLES:
            raise InvalidToken("the token carries no known role")
        return Identity(sub=str(claims["sub"]), role=role, name=str(claims.get("name", "")))
