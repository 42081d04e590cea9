"""Bearer tokens: the identity provider's JWKS served over real loopback HTTP, and the embedded default's key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jinshui.kit import tokens
from jinshui.kit.tokens import (
    Identity,
    InvalidToken,
    KeysUnavailable,
    TokenVerifier,
    check_algorithms,
    issue_token,
)

ISSUER = "https://idp.example.test/realms/jinshui"
AUDIENCE = "jinshui-gateway"


def public_jwk(key: Any, *, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "officer-7",
        "role": "police",
        "name": "王警官",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: Any, *, alg: str, kid: str | None, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unsigned(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None = None) -> str:
    """A token put together by hand: `alg: none`, or HS256 with `secret` (pyjwt refuses to make either)."""
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(payload).encode())
    signature = b"" if secret is None else _b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 in a thread; `keys` can be changed while it runs; `fetches` counts requests."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="jwks", daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    keys = [public_jwk(RSA_KEY, kid="rsa-1", alg="RS256"), public_jwk(EC_KEY, kid="ec-1", alg="ES256")]
    with JwksServer(keys) as server:
        yield server


@pytest.fixture
def verifier(idp: JwksServer) -> TokenVerifier:
    return TokenVerifier.from_jwks(idp.url, issuer=ISSUER, audience=AUDIENCE)


def refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    assert reason in str(caught.value)


# --- what passes ---------------------------------------------------------------------------------
def test_rs256_and_es256_tokens_of_the_identity_provider_pass(verifier: TokenVerifier, idp: JwksServer) -> None:
    expected = Identity(sub="officer-7", role="police", name="王警官")
    assert verifier.verify(sign(RSA_KEY, alg="RS256", kid="rsa-1")) == expected
    assert verifier.verify(sign(EC_KEY, alg="ES256", kid="ec-1")) == expected
    assert idp.fetches == 1, "the JWK set is cached"


def test_grids_and_beat_claims_are_not_trusted_for_scope(verifier: TokenVerifier) -> None:
    identity = verifier.verify(sign(RSA_KEY, alg="RS256", kid="rsa-1", grids=["G1", "G2"], beat="B9"))
    assert identity == Identity(sub="officer-7", role="police", name="王警官")


def test_small_clock_skew_is_tolerated(verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = sign(RSA_KEY, alg="RS256", kid="rsa-1", iat=now + 10, nbf=now + 10, exp=now - 10 + 600)
    assert verifier.verify(token).sub == "officer-7"
    assert verifier.verify(sign(RSA_KEY, alg="RS256", kid="rsa-1", exp=now - 10)).sub == "officer-7"


def test_a_key_the_provider_adds_later_is_fetched(verifier: TokenVerifier, idp: JwksServer) -> None:
    verifier.verify(sign(RSA_KEY, alg="RS256", kid="rsa-1"))
    idp.keys = [*idp.keys, public_jwk(OTHER_RSA_KEY, kid="rsa-2", alg="RS256")]
    verifier._jwks.cooldown_duration = 0  # the refetch on an unknown kid is otherwise limited to one per 30 s
    assert verifier.verify(sign(OTHER_RSA_KEY, alg="RS256", kid="rsa-2")).role == "police"
    assert idp.fetches == 2


# --- what is refused -----------------------------------------------------------------------------
def test_no_token(verifier: TokenVerifier) -> None:
    refused(verifier, "", "a bearer token is required")
    refused(verifier, "not-a-jwt", "not a well-formed JWT")


def test_alg_none(verifier: TokenVerifier) -> None:
    refused(verifier, unsigned({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims()), "algorithm 'none'")
    refused(verifier, unsigned({"alg": "None", "typ": "JWT"}, claims()), "algorithm 'None'")


def test_hmac_signed_with_the_public_key_is_refused(verifier: TokenVerifier) -> None:
    """The confusion attack: HS256 with the provider's public key PEM as the shared secret."""
    forged = unsigned({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(role="ops"), public_pem(RSA_KEY))
    refused(verifier, forged, "algorithm 'HS256' is not accepted")


def test_a_bad_signature(verifier: TokenVerifier) -> None:
    refused(verifier, sign(OTHER_RSA_KEY, alg="RS256", kid="rsa-1"), "signature does not match")
    head, _, sig = sign(RSA_KEY, alg="RS256", kid="rsa-1").split(".")
    tampered = _b64(json.dumps(claims(role="ops")).encode()).decode()
    refused(verifier, f"{head}.{tampered}.{sig}", "signature does not match")


def test_an_es256_token_under_an_rsa_kid_is_refused(verifier: TokenVerifier) -> None:
    refused(verifier, sign(EC_KEY, alg="ES256", kid="rsa-1"), "not valid")


def test_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", iat=now - 900, nbf=now - 900, exp=now - 120), "expired")


def test_not_yet_valid(verifier: TokenVerifier) -> None:
    now = int(time.time())
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", nbf=now + 300, exp=now + 900), "not yet valid")


def test_wrong_issuer(verifier: TokenVerifier) -> None:
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", iss="https://evil.test"), "issuer is not trusted")


def test_wrong_audience(verifier: TokenVerifier) -> None:
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", aud="another-app"), "not meant for this audience")


def test_missing_claims(verifier: TokenVerifier) -> None:
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", exp=None), "lacks the 'exp' claim")
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", aud=None), "lacks the 'aud' claim")
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", sub=""), "subject is empty")


def test_no_role_or_an_unknown_role(verifier: TokenVerifier) -> None:
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", role=None), "carries no role")
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", role="mayor"), "role is not one of")
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1", role=["police"]), "role is not one of")


def test_a_kid_the_jwks_does_not_have(verifier: TokenVerifier, idp: JwksServer) -> None:
    refused(verifier, sign(OTHER_RSA_KEY, alg="RS256", kid="rsa-404"), "'rsa-404' is not one the identity provider")
    refused(verifier, sign(OTHER_RSA_KEY, alg="RS256", kid="rsa-405"), "is not one the identity provider")
    assert idp.fetches == 1, "unknown kids do not make the gateway hammer the provider"
    refused(verifier, sign(RSA_KEY, alg="RS256", kid=None), "no kid")


def test_an_unreachable_jwks_is_not_the_callers_fault(idp: JwksServer) -> None:
    verifier = TokenVerifier.from_jwks(idp.url.replace("/jwks.json", "/gone"), issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(KeysUnavailable):
        verifier.verify(sign(RSA_KEY, alg="RS256", kid="rsa-1"))


def test_only_public_key_algorithms_are_configurable(idp: JwksServer) -> None:
    assert check_algorithms(["RS256", "ES256"]) == ["RS256", "ES256"]
    for bad in (["HS256"], ["RS256", "none"], []):
        with pytest.raises(ValueError):
            check_algorithms(bad)
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier.from_jwks(idp.url, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256", "HS256"])


def test_algorithms_can_be_narrowed(idp: JwksServer) -> None:
    verifier = TokenVerifier.from_jwks(idp.url, issuer=ISSUER, audience=AUDIENCE, algorithms=["ES256"])
    refused(verifier, sign(RSA_KEY, alg="RS256", kid="rsa-1"), "algorithm 'RS256' is not accepted")
    assert verifier.verify(sign(EC_KEY, alg="ES256", kid="ec-1")).role == "police"


# --- the embedded default ------------------------------------------------------------------------
def test_development_tokens_round_trip(tmp_path: Path) -> None:
    token = issue_token(home=tmp_path, role="grid_worker", sub="gw-3", name="李网格")
    identity = TokenVerifier.for_development(tmp_path).verify(token)
    assert identity == Identity(sub="gw-3", role="grid_worker", name="李网格")
    assert (tmp_path / "keys" / "token-signing.pem").stat().st_mode & 0o777 == 0o600


def test_development_verifier_refuses_confusion_and_other_keys(tmp_path: Path) -> None:
    verifier = TokenVerifier.for_development(tmp_path)
    dev_key = serialization.load_pem_private_key((tmp_path / "keys" / "token-signing.pem").read_bytes(), None)
    payload = claims(iss=tokens.DEV_ISSUER, aud=tokens.AUDIENCE)
    refused(verifier, unsigned({"alg": "HS256", "typ": "JWT"}, payload, public_pem(dev_key)), "'HS256' is not accepted")
    refused(verifier, unsigned({"alg": "none", "typ": "JWT"}, payload), "'none' is not accepted")
    refused(verifier, jwt.encode(payload, RSA_KEY, algorithm="RS256"), "'RS256' is not accepted")
    refused(verifier, jwt.encode(payload, EC_KEY, algorithm="ES256"), "signature does not match")
    refused(verifier, issue_token(home=tmp_path / "elsewhere", role="police"), "signature does not match")


def test_development_tokens_are_refused_by_an_identity_provider_verifier(
    tmp_path: Path, verifier: TokenVerifier
) -> None:
    refused(verifier, issue_token(home=tmp_path, role="police"), "no kid")
