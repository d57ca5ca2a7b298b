"""JWT verification, token minting and authentication settings (unit tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssehub.app import create_app
from ssehub.auth import (
    TOKEN_COOKIE,
    Authenticator,
    JwtAuthenticator,
    JwtVerifier,
    create_authenticator,
    mint_token,
)
from ssehub.exceptions import AuthenticationFailed, ConfigurationError, PermissionDenied
from ssehub.settings import Settings
from tests.conftest import ServerFactory

SECRET = "unit-test-secret-of-a-reasonable-length"


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwk(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    algorithm: Any = jwt.algorithms.RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) \
        else jwt.algorithms.ECAlgorithm  # fmt: skip
    jwk = json.loads(algorithm.to_jwk(private.public_key()))
    jwk["kid"] = kid
    return dict(jwk)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def test_a_minted_token_verifies_and_names_its_user() -> None:
    claims = JwtVerifier(secret=SECRET).decode(mint_token(SECRET, "alice", ttl=60))
    assert claims["sub"] == "alice"
    assert 55 <= claims["exp"] - time.time() <= 60
    assert "scope" not in claims


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: mint_token(SECRET, "alice", ttl=-5), "expired"),
        (lambda: mint_token(SECRET, "alice", not_before=time.time() + 60), "not valid yet"),
        (lambda: mint_token("some-other-secret-entirely-unknown", "alice"), "signature"),
        (lambda: "a.b.c", "malformed"),
        (lambda: "", "malformed"),
        (lambda: "x" * 9000, "too long"),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "'exp'"),
        (
            lambda: jwt.encode({"sub": "a", "exp": time.time() + 60}, "", algorithm="none"),
            "algorithm",
        ),
        (lambda: mint_token(SECRET * 2, "alice", algorithm="HS512"), "algorithm"),
    ],
    ids=[
        "expired",
        "not yet valid",
        "forged",
        "three garbage parts",
        "empty",
        "too long",
        "no exp",
        "alg none",
        "alg not accepted",
    ],
)
def test_a_bad_token_is_refused_with_a_reason(make: Callable[[], str], reason: str) -> None:
    token = make()  # now, not when the tests were collected
    with pytest.raises(AuthenticationFailed, match=reason):
        JwtVerifier(secret=SECRET).decode(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = JwtVerifier(secret=SECRET, audience="ssehub", issuer="https://id.example")
    good = mint_token(SECRET, "alice", audience="ssehub", issuer="https://id.example")
    assert verifier.decode(good)["sub"] == "alice"
    with pytest.raises(AuthenticationFailed, match="audience"):
        verifier.decode(mint_token(SECRET, "alice", audience="other", issuer="https://id.example"))
    with pytest.raises(AuthenticationFailed, match="issuer"):
        verifier.decode(mint_token(SECRET, "alice", audience="ssehub", issuer="https://evil"))
    with pytest.raises(AuthenticationFailed, match="aud"):
        verifier.decode(mint_token(SECRET, "alice", issuer="https://id.example"))


def test_rs256_tokens_verify_with_a_pem_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(public_key_pem=_pem(rsa_key))
    assert verifier.algorithms == {"RS256"}
    token = mint_token(rsa_key, "alice", algorithm="RS256")
    assert verifier.decode(token)["sub"] == "alice"


def test_a_public_key_can_never_be_used_as_an_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _pem(rsa_key)
    header = _segment({"alg": "HS256", "typ": "JWT"})
    body = _segment({"sub": "alice", "exp": int(time.time()) + 60})
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    with pytest.raises(AuthenticationFailed):
        JwtVerifier(public_key_pem=pem).decode(forged)
    with pytest.raises(ConfigurationError, match="do not fit"):
        JwtVerifier(public_key_pem=pem, algorithms=["HS256", "RS256"])


def test_es256_tokens_verify_with_a_jwks_picking_the_key_by_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks = {"keys": [_jwk(rsa_key, "r1"), _jwk(ec_key, "e1")]}
    verifier = JwtVerifier(jwks=jwks)
    es = mint_token(ec_key, "alice", algorithm="ES256", key_id="e1")
    rs = mint_token(rsa_key, "bob", algorithm="RS256", key_id="r1")
    assert verifier.decode(es)["sub"] == "alice"
    assert verifier.decode(rs)["sub"] == "bob"
    with pytest.raises(AuthenticationFailed, match="key id"):
        verifier.decode(mint_token(ec_key, "alice", algorithm="ES256", key_id="nope"))
    with pytest.raises(AuthenticationFailed, match="does not fit"):
        verifier.decode(mint_token(rsa_key, "alice", algorithm="RS256", key_id="e1"))


def _jwt_auth(**options: Any) -> JwtAuthenticator:
    return JwtAuthenticator(JwtVerifier(secret=SECRET), **options)


def test_the_publish_scope_grants_publishing_but_not_from_a_cookie() -> None:
    auth = _jwt_auth()
    token = mint_token(SECRET, "svc", publish=True)
    assert auth.publisher({"authorization": f"Bearer {token}"}, {}).user_id == "svc"
    assert auth.publisher({}, {"access_token": token}).publisher
    with pytest.raises(PermissionDenied):
        auth.publisher({"cookie": f"{TOKEN_COOKIE}={token}"}, {})
    scoped = mint_token(SECRET, None, claims={"scope": ["read", "ssehub:publish"]})
    assert auth.publisher({"authorization": f"Bearer {scoped}"}, {}).user_id is None


def test_a_configured_user_claim_names_the_user() -> None:
    auth = _jwt_auth(user_claim="email")
    token = mint_token(SECRET, "a@example.com", user_claim="email")
    grant = auth.subscriber("a@example.com", {"authorization": f"Bearer {token}"}, {})
    assert grant.user_id == "a@example.com"
    assert grant.remaining() is not None
    with pytest.raises(AuthenticationFailed, match="'email'"):
        auth.grant({"authorization": f"Bearer {mint_token(SECRET, 'alice')}"}, {})


def test_api_keys_are_accepted_as_header_or_bearer_and_nothing_else() -> None:
    auth = _jwt_auth(publish_keys=["k1", "k2"])
    assert auth.publisher({"x-api-key": "k2"}, {}).publisher
    assert auth.publisher({"authorization": "Bearer k1"}, {}).publisher
    with pytest.raises(AuthenticationFailed):
        auth.publisher({"x-api-key": "k3"}, {})
    with pytest.raises(AuthenticationFailed):
        auth.publisher({}, {"access_token": "k1"})


def _settings(**values: Any) -> Settings:
    return Settings(store="memory://", **values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": "jwt"}, "needs a key"),
        ({"auth": "jwt", "publish_key": ["k"]}, "needs a key"),
        ({"auth": "jwt", "jwt_public_key": "/nonexistent/key.pem"}, "cannot read"),
        ({"auth": "jwt", "jwks_file": "/nonexistent/jwks.json"}, "cannot read"),
        ({"auth": "jwt", "jwt_secret": SECRET, "jwt_algorithms": ["RS256"]}, "do not fit"),
        ({"auth": "jwt", "jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_secret": SECRET}, "auth is open"),
        ({"cors_origin": ["*"], "cors_credentials": True}, "cors"),
    ],
)
def test_misconfigured_authentication_is_refused_at_start_up(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_app(_settings(**values))


def test_unreadable_key_files_are_refused_at_start_up(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    jwks = tmp_path / "jwks.json"
    jwks.write_text("[1, 2]")
    with pytest.raises(ConfigurationError, match="public key"):
        create_authenticator(_settings(auth="jwt", jwt_public_key=str(pem)))
    with pytest.raises(ConfigurationError, match="keys"):
        create_authenticator(_settings(auth="jwt", jwks_file=str(jwks)))


def test_key_files_from_the_settings_are_read(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    (tmp_path / "key.pem").write_bytes(_pem(rsa_key))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [_jwk(ec_key, "e1")]}))
    auth = create_authenticator(_settings(auth="jwt", jwt_public_key=str(tmp_path / "key.pem"),
                                          jwks_file=str(tmp_path / "jwks.json")))  # fmt: skip
    for token in (mint_token(rsa_key, "alice", algorithm="RS256"),
                  mint_token(ec_key, "alice", algorithm="ES256", key_id="e1")):  # fmt: skip
        assert auth.subscriber("alice", {"authorization": f"Bearer {token}"}, {}).user_id == "alice"
    assert type(create_authenticator(_settings())) is Authenticator


def test_a_server_with_jwt_mode_but_no_key_exits_with_a_clear_error(
    start_server: ServerFactory,
) -> None:
    server = start_server("--auth", "jwt", start=False)
    with pytest.raises(RuntimeError, match="server exited early") as failure:
        server.start(timeout=20)
    assert "--auth jwt needs a key" in str(failure.value)
    assert server.wait() == 2


def test_configured_cors_origins_may_send_credentials(start_server: ServerFactory) -> None:
    server = start_server("--auth", "jwt", "--jwt-secret", SECRET, "--cors-origin",
                          "https://app.example", "--cors-credentials")  # fmt: skip
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization, last-event-id"}  # fmt: skip
    allowed = httpx.options(f"{server.url}/sse/users/alice",
                            headers={"Origin": "https://app.example", **preflight})  # fmt: skip
    refused = httpx.options(f"{server.url}/sse/users/alice",
                            headers={"Origin": "https://evil.example", **preflight})  # fmt: skip
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_open_mode_on_a_public_address_warns_and_jwt_mode_does_not(
    start_server: ServerFactory,
) -> None:
    open_server = start_server("--host", "0.0.0.0")
    jwt_server = start_server("--host", "0.0.0.0", "--auth", "jwt", "--jwt-secret", SECRET)
    assert "auth is open and ssehub listens on 0.0.0.0" in open_server.log()
    assert "auth is open" not in jwt_server.log()
