"""Identity at the gateway: tokens of an identity provider, verified against a JWKS this test serves over loopback
HTTP; every refused token is a 401 problem; in production the gateway refuses to start without a JWKS URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from jinshui.gateway.settings import GatewaySettings
from jinshui.kit.pii import Keyring
from jinshui.kit.tokens import issue_token

PROBLEM = "application/problem+json"
ISSUER = "https://idp.example.test/realms/jinshui"
AUDIENCE = "jinshui-gateway"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: Any, *, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """A JWKS endpoint on 127.0.0.1, served from a thread of this test process."""
    body = json.dumps(
        {"keys": [public_jwk(RSA_KEY, kid="rsa-1", alg="RS256"), public_jwk(EC_KEY, kid="ec-1", alg="ES256")]}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="jwks", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def token(key: Any = RSA_KEY, *, alg: str = "RS256", kid: str | None = "rsa-1", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "gw-9", "role": "grid_worker", "iat": now, "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def handmade(alg: str, secret: bytes | None = None) -> str:
    """`alg: none`, or HS256 keyed with `secret`: tokens pyjwt will not make."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "gw-9", "role": "ops", "exp": now + 600}

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = (
        b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "rsa-1"}).encode()) + b"." + b64(json.dumps(claims).encode())
    )
    signature = b"" if secret is None else b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def test_identity_provider_tokens_pass_and_bad_ones_get_401(stack, service_env, jwks_url):
    s = await stack(
        services=("gateway",),
        env_overrides={"JWKS_URL": jwks_url, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE},
    )
    now = int(time.time())
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    refusals = {
        "alg none": (handmade("none"), "algorithm 'none' is not accepted"),
        "HS256 keyed with the public key": (handmade("HS256", public_pem), "algorithm 'HS256' is not accepted"),
        "bad signature": (token(STRANGER_KEY), "signature does not match"),
        "expired": (token(iat=now - 900, exp=now - 120), "expired"),
        "not yet valid": (token(nbf=now + 300), "not yet valid"),
        "wrong issuer": (token(iss="https://evil.example.test"), "issuer is not trusted"),
        "wrong audience": (token(aud="another-app"), "not meant for this audience"),
        "no role": (token(role=None), "carries no role"),
        "unknown role": (token(role="mayor"), "role is not one of"),
        "unknown kid": (token(STRANGER_KEY, kid="rsa-9"), "'rsa-9' is not one the identity provider publishes"),
        "development token": (issue_token(home=service_env["JINSHUI_HOME"], role="grid_worker"), "no kid"),
    }
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=10) as client:
        for good in (token(), token(EC_KEY, alg="ES256", kid="ec-1", grids=["G-1"], beat="B-1")):
            r = await client.get("/v1/submissions/xyz", headers={"Authorization": f"Bearer {good}"})
            assert "no submission xyz" in problem(r, 404)["detail"]

        r = await client.get("/v1/submissions/xyz")
        assert problem(r, 401)["detail"] == "a bearer token is required"
        assert r.headers["www-authenticate"].startswith("Bearer")

        for case, (bad, reason) in refusals.items():
            r = await client.get("/v1/submissions/xyz", headers={"Authorization": f"Bearer {bad}"})
            body = problem(r, 401)
            assert reason in body["detail"], case
            assert body["type"].endswith("/unauthenticated"), case
            assert 'error="invalid_token"' in r.headers["www-authenticate"], case


def test_production_settings_refuse_development_tokens_and_missing_keys(tmp_path):
    base = {"jinshui_env": "production", "database_url": "postgresql://jinshui@db/jinshui", "jinshui_home": tmp_path}
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(**base)
    assert "JWKS_URL must name the identity provider's keys" in str(caught.value)
    assert "JINSHUI_PII_KEYS" in str(caught.value)

    idp = {"jwks_url": "https://idp.example.test/jwks", "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    keys = Keyring.generate().to_json()
    settings = GatewaySettings(**base, **idp, jinshui_pii_keys=keys)
    assert settings.pii_keyring().active == "k1"
    with pytest.raises(ValidationError, match="JWKS_URL must be https"):
        GatewaySettings(**base, **{**idp, "jwks_url": "http://idp.example.test/jwks"}, jinshui_pii_keys=keys)
    with pytest.raises(ValidationError, match="personal-data keys are not usable"):
        GatewaySettings(**base, **idp, jinshui_pii_keys="{}")


def test_identity_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("JWT_ALGORITHMS", "ES256, RS256")
    assert GatewaySettings().jwt_algorithms == ["ES256", "RS256"]
    monkeypatch.setenv("JWT_ALGORITHMS", '["RS256"]')
    assert GatewaySettings().jwt_algorithms == ["RS256"]
    monkeypatch.setenv("JWT_ALGORITHMS", "RS256,HS256")
    with pytest.raises(ValidationError, match="HS256"):
        GatewaySettings()
    monkeypatch.delenv("JWT_ALGORITHMS")
    monkeypatch.setenv("JWKS_URL", "https://idp.example.test/jwks")
    with pytest.raises(ValidationError, match="JWT_ISSUER and JWT_AUDIENCE"):
        GatewaySettings()


def test_the_gateway_process_refuses_to_start_in_production_without_a_jwks_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWKS_", "JWT_", "JINSHUI_PII_"))}
    env.update(
        JINSHUI_ENV="production",
        DATABASE_URL="postgresql://jinshui@127.0.0.1:1/jinshui",
        JINSHUI_HOME=str(tmp_path),
        JINSHUI_CLOCK="wall",
    )
    done = subprocess.run(
        [sys.executable, "-m", "jinshui.gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "refusing to start in production" in done.stderr and "JWKS_URL" in done.stderr
    assert not (tmp_path / "keys").exists(), "no development key was made"
