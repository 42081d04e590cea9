"""Who is calling: bearer tokens and roles."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from jinshui.gateway.settings import GatewaySettings
from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity, InvalidToken, KeysUnavailable, TokenVerifier

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jinshui"'}
INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jinshui", error="invalid_token"'}


def verifier_from_settings(settings: GatewaySettings) -> TokenVerifier:
    """The identity provider's JWKS when configured; else (development and tests) the key under JINSHUI_HOME."""
    if settings.jwks_url:
        assert settings.jwt_issuer and settings.jwt_audience  # the settings refuse a JWKS URL without them
        return TokenVerifier.from_jwks(
            settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=settings.jwt_algorithms,
            leeway_seconds=settings.jwt_leeway_seconds,
            cache_seconds=settings.jwks_cache_seconds,
        )
    if settings.is_production:
        raise RuntimeError("refusing development tokens in production: set JWKS_URL")
    return TokenVerifier.for_development(settings.jinshui_home, leeway_seconds=settings.jwt_leeway_seconds)


def authenticate(request: Request) -> Identity:
    """The caller named by the bearer token, or a 401 problem saying why not."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "a bearer token is required", type="unauthenticated", headers=BEARER_CHALLENGE)
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return verifier.verify(token.strip())
    except InvalidToken as e:
        raise Problem(401, str(e), type="unauthenticated", headers=INVALID_TOKEN_CHALLENGE) from e
    except KeysUnavailable as e:
        raise Problem(503, str(e), type="identity-unavailable", headers={"Retry-After": "5"}) from e


def require(*roles: str) -> Callable[[Request], Identity]:
    """A dependency admitting only callers with one of `roles`."""

    def dependency(request: Request) -> Identity:
        identity = authenticate(request)
        if identity.role not in roles:
            raise Problem(
                403,
                f"role {identity.role} may not call {request.method} {request.url.path}",
                type="forbidden",
                allowed_roles=sorted(roles),
            )
        return identity

    return dependency
