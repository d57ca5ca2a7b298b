"""JSON Web Tokens: the keys ssehub verifies with, and tokens it mints.

A token names its user in ``sub`` (or a configured claim) and may carry publisher
rights as the OAuth scope ``ssehub:publish`` (``"scope": "ssehub:publish"``, space
separated, or a list). ``exp`` is required: a token that never expires would hold a
stream open forever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ssehub.exceptions import AuthenticationFailed, ConfigurationError

PUBLISH_SCOPE = "ssehub:publish"
MAX_TOKEN_LENGTH = 8192

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC = frozenset({"ES256", "ES384", "ES512"})
_OKP = frozenset({"EdDSA"})


def _family(key: object) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _EC
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _OKP
    raise ConfigurationError(f"unsupported public key type {type(key).__name__}")


def _default_algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
    return {_RSA: "RS256", _OKP: "EdDSA"}[_family(key)]


class JwtVerifier:
    """Checks a token's signature, ``exp``, ``nbf`` and, when set, ``aud`` and ``iss``.

    Args:
        secret: the HS256 shared secret.
        public_key_pem: a PEM public key (RSA, EC or Ed25519).
        jwks: a JSON Web Key Set document (``{"keys": [...]}``).
        algorithms: accepted algorithms; by default the usual one of each key.
        audience: required ``aud``, if any.
        issuer: required ``iss``, if any.

    Raises:
        ConfigurationError: no key, a key that cannot be read, or algorithms that do
            not fit the keys (an HMAC algorithm with a public key is refused, so a
            public key can never be used as a shared secret).
    """

    def __init__(
        self,
        *,
        secret: str = "",
        public_key_pem: bytes | None = None,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] = (),
        audience: str = "",
        issuer: str = "",
    ) -> None:
        self._secret = secret
        self._audience = audience or None
        self._issuer = issuer or None
        self._public: Any = None
        self._by_kid: dict[str, Any] = {}
        self._unnamed: list[Any] = []
        defaults: set[str] = set()
        if secret:
            defaults.add("HS256")
        if public_key_pem is not None:
            try:
                self._public = load_pem_public_key(public_key_pem)
            except ValueError as exc:
                raise ConfigurationError(f"cannot read the JWT public key: {exc}") from exc
            defaults.add(_default_algorithm(self._public))
        if jwks is not None:
            try:
                keyset = jwt.PyJWKSet.from_dict(dict(jwks))
            except (jwt.PyJWKSetError, jwt.PyJWKError, jwt.InvalidKeyError) as exc:
                raise ConfigurationError(f"cannot read the JWKS: {exc}") from exc
            for jwk in keyset.keys:
                key = jwk.key
                if jwk.key_id:
                    self._by_kid[jwk.key_id] = key
                else:
                    self._unnamed.append(key)
                defaults.add(jwk.algorithm_name if jwk.algorithm_name in _RSA | _EC | _OKP
                             else _default_algorithm(key))  # fmt: skip
        if not defaults:
            raise ConfigurationError(
                "--auth jwt needs a key: --jwt-secret, --jwt-public-key or --jwks-file"
            )
        self.algorithms = frozenset(algorithms) if algorithms else frozenset(defaults)
        self._check_algorithms()

    def _check_algorithms(self) -> None:
        public_keys = [
            k for k in (self._public, *self._by_kid.values(), *self._unnamed) if k is not None
        ]
        usable = set(_HMAC if self._secret else ())
        for key in public_keys:
            usable |= _family(key)
        unusable = self.algorithms - usable
        if unusable:
            raise ConfigurationError(
                f"JWT algorithms {sorted(unusable)} do not fit the configured keys"
            )
        for algorithm in self.algorithms & _HMAC:
            # RFC 7518, section 3.2: an HMAC key at least as long as the hash.
            needed = int(algorithm[2:]) // 8
            if len(self._secret.encode()) < needed:
                raise ConfigurationError(
                    f"the JWT secret must be at least {needed} bytes for {algorithm}"
                )

    def _key_for(self, header: Mapping[str, Any]) -> Any:
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise AuthenticationFailed("token algorithm is not accepted")
        if algorithm in _HMAC:
            return self._secret
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self._by_kid:
            key = self._by_kid[kid]
        else:
            candidates = [k for k in (self._public, *self._unnamed) if k is not None]
            if not candidates and len(self._by_kid) == 1 and kid is None:
                candidates = list(self._by_kid.values())
            if len(candidates) != 1:
                raise AuthenticationFailed("token key id is unknown")
            key = candidates[0]
        if algorithm not in _family(key):
            raise AuthenticationFailed("token algorithm does not fit its key")
        return key

    def decode(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``.

        Raises:
            AuthenticationFailed: the token is malformed, forged, expired, not yet
                valid, for another audience or issuer, or lacks ``exp``.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationFailed("token is too long")
        try:
            header = jwt.get_unverified_header(token)
            key = self._key_for(header)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthenticationFailed("token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationFailed("token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationFailed("token is from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationFailed(f"token lacks the '{exc.claim}' claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationFailed("token signature is invalid") from exc
        except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise AuthenticationFailed("token is malformed") from exc
        return claims


def has_publish_scope(claims: Mapping[str, Any]) -> bool:
    """Whether the claims carry the ``ssehub:publish`` scope."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return PUBLISH_SCOPE in scope.split()
    if isinstance(scope, list):
        return PUBLISH_SCOPE in scope
    return False


def read_key_file(path: str, what: str) -> bytes:
    """Read a key file given in the settings.

    Raises:
        ConfigurationError: the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path!r}: {exc.strerror}") from exc


def read_jwks_file(path: str) -> dict[str, Any]:
    """Read and parse a JWKS file.

    Raises:
        ConfigurationError: the file cannot be read or is not a JSON object.
    """
    try:
        document = json.loads(read_key_file(path, "JWKS file"))
    except ValueError as exc:
        raise ConfigurationError(f"the JWKS file {path!r} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigurationError(f'the JWKS file {path!r} is not {{"keys": [...]}}')
    return document


def mint_token(
    secret: str | bytes | Any,
    user_id: str | None,
    *,
    ttl: float = 3600,
    publish: bool = False,
    audience: str | None = None,
    issuer: str | None = None,
    user_claim: str = "sub",
    algorithm: str = "HS256",
    key_id: str | None = None,
    not_before: float | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """Make a signed token that ssehub accepts.

    Args:
        secret: the HS256 secret (or, with another ``algorithm``, a private key).
        user_id: the user the token speaks for; None for a publisher-only token.
        ttl: seconds until it expires.
        publish: grant publisher rights (the ``ssehub:publish`` scope).
        audience: the ``aud`` claim, if any.
        issuer: the ``iss`` claim, if any.
        user_claim: the claim that holds the user id.
        algorithm: the signing algorithm.
        key_id: the ``kid`` header, to pick a key of a JWKS.
        not_before: Unix time before which the token is not valid, if any.
        claims: more claims to include.
    """
    now = time.time()
    payload: dict[str, Any] = {"iat": int(now), "exp": int(now + ttl)}
    if user_id is not None:
        payload[user_claim] = user_id
    if publish:
        payload["scope"] = PUBLISH_SCOPE
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    if not_before is not None:
        payload["nbf"] = int(not_before)
    payload.update(claims or {})
    headers = {"kid": key_id} if key_id is not None else None
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


__all__ = [
    "MAX_TOKEN_LENGTH",
    "PUBLISH_SCOPE",
    "JwtVerifier",
    "has_publish_scope",
    "mint_token",
    "read_jwks_file",
    "read_key_file",
]
