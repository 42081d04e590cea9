"""Who is calling: bearer tokens and roles."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from jinshui.kit.problems import Problem
from jinshui.kit.tokens import Identity, InvalidToken, TokenVerifier

BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jinshui"'}


def authenticate(request: Request) -> Identity:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "a bearer token is required", type="unauthenticated", headers=BEARER_CHALLENGE)
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return verifier.verify(token.strip())
    except InvalidToken as e:
        raise Problem(401, str(e), type="unauthenticated", headers=BEARER_CHALLENGE) from e


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
