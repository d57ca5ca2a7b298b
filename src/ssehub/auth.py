"""Who may subscribe as a user, and who may publish.

`Authenticator` works on plain headers and query parameters, so the ASGI routes and
the fast path share it. In ``open`` mode everyone may do everything, as in the sample;
in ``jwt`` mode (`JwtAuthenticator`) a token names the user, and publishing needs an API
key or a token with the ``ssehub:publish`` scope.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING

from ssehub.auth_jwt import (
    PUBLISH_SCOPE,
    JwtVerifier,
    has_publish_scope,
    mint_token,
    read_jwks_file,
    read_key_file,
)
from ssehub.exceptions import AuthenticationFailed, ConfigurationError, PermissionDenied

if TYPE_CHECKING:
    from ssehub.settings import Settings

TOKEN_COOKIE = "ssehub_token"
TOKEN_QUERY = "access_token"


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What a request may do.

    Attributes:
        user_id: the user the credentials speak for, or None.
        publisher: may publish, broadcast and read state.
        expires_at: Unix time the credentials expire, or None.
    """

    user_id: str | None = None
    publisher: bool = False
    expires_at: float | None = None

    def remaining(self) -> float | None:
        """Seconds until the credentials expire, or None."""
        return None if self.expires_at is None else self.expires_at - time.time()


OPEN_GRANT = Grant(publisher=True)


def bearer_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token of a request: ``Authorization: Bearer``, then the cookie, then the query."""
    return _find_token(headers, query)[0]


def _find_token(
    headers: Mapping[str, str], query: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The token and where it came from: "header", "cookie" or "query"."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), "header"
    cookie_header = headers.get("cookie")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except CookieError:  # a malformed cookie header is just no cookie
            cookies = SimpleCookie()
        morsel = cookies.get(TOKEN_COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value, "cookie"
    token = query.get(TOKEN_QUERY)
    return (token, "query") if token else (None, None)


class Authenticator:
    """Decides who may subscribe and who may publish.

    Args:
        publish_keys: API keys that grant publisher rights (compared in constant time).
    """

    mode = "open"

    def __init__(self, *, publish_keys: Sequence[str] = ()) -> None:
        self._publish_keys = [key.encode() for key in publish_keys if key]

    def has_publish_key(self, headers: Mapping[str, str]) -> bool:
        """Whether the request carries a configured API key (``X-API-Key`` or Bearer)."""
        candidates = [headers.get("x-api-key", "")]
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
        found = False
        for candidate in candidates:
            raw = candidate.encode()
            for key in self._publish_keys:
                found |= hmac.compare_digest(raw, key)
        return found

    def grant(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Grant:
        """Everything the request's credentials allow."""
        return OPEN_GRANT

    def subscriber(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> Grant:
        """Allow a stream of ``user_id``, or raise.

        Raises:
            AuthenticationFailed: no valid credentials.
            PermissionDenied: credentials of another user.
        """
        grant = self.grant(headers, query)
        if grant.publisher and grant.user_id is None:
            return grant
        if grant.user_id != user_id:
            raise PermissionDenied("the token is not for this user")
        return grant

    def publisher(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Grant:
        """Allow publishing, or raise.

        Raises:
            AuthenticationFailed: no valid credentials.
            PermissionDenied: credentials without publisher rights.
        """
        grant = self.grant(headers, query)
        if not grant.publisher:
            raise PermissionDenied("publisher rights are needed")
        return grant

    def user_or_publisher(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> Grant:
        """Allow the user themself or a publisher, or raise."""
        grant = self.grant(headers, query)
        if grant.publisher or grant.user_id == user_id:
            return grant
        raise PermissionDenied("only the user or a publisher may do this")


class KeyAuthenticator(Authenticator):
    """Closed: only API keys are accepted, and they grant publisher rights.

    For applications that identify their users themselves (see ``create_router``'s
    ``identify``) and let other services publish with a key.
    """

    mode = "keys"

    def grant(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Grant:
        """Publisher rights for a configured API key.

        Raises:
            AuthenticationFailed: no key, or a wrong one.
        """
        if self._publish_keys and self.has_publish_key(headers):
            return OPEN_GRANT
        raise AuthenticationFailed("an API key is needed")


class JwtAuthenticator(Authenticator):
    """``jwt`` mode: a verified token names the user; publishing needs rights.

    Publisher rights come from an API key (``X-API-Key`` or ``Authorization: Bearer``)
    or from a token with the ``ssehub:publish`` scope sent as a header or a query
    parameter. A token in a cookie speaks for its user only: browsers send cookies by
    themselves, so a cookie never grants publishing (no cross-site request forgery).

    Args:
        verifier: checks tokens.
        publish_keys: API keys that grant publisher rights.
        user_claim: the claim that holds the user id.
    """

    mode = "jwt"

    def __init__(
        self, verifier: JwtVerifier, *, publish_keys: Sequence[str] = (), user_claim: str = "sub"
    ) -> None:
        super().__init__(publish_keys=publish_keys)
        self.verifier = verifier
        self.user_claim = user_claim

    def grant(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Grant:
        """What the request's API key or token allows.

        Raises:
            AuthenticationFailed: no credentials, or a token that does not verify.
        """
        if self._publish_keys and self.has_publish_key(headers):
            return OPEN_GRANT
        token, source = _find_token(headers, query)
        if token is None:
            raise AuthenticationFailed("credentials are needed: a bearer token or an API key")
        claims = self.verifier.decode(token)
        user = claims.get(self.user_claim)
        user_id = user if isinstance(user, str) and user else None
        publisher = source != "cookie" and has_publish_scope(claims)
        if user_id is None and not publisher:
            raise AuthenticationFailed(f"token has no '{self.user_claim}' claim")
        expires = claims.get("exp")
        expires_at = float(expires) if isinstance(expires, (int, float)) else None
        return Grant(user_id=user_id, publisher=publisher, expires_at=expires_at)


def create_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings ask for; reads key files.

    Raises:
        ConfigurationError: jwt mode without a key, a key file that cannot be read,
            or JWT keys given while auth is open (the hub would be open by mistake).
    """
    has_jwt_key = bool(settings.jwt_secret or settings.jwt_public_key or settings.jwks_file)
    if settings.auth == "open":
        if has_jwt_key:
            raise ConfigurationError(
                "a JWT key is configured but auth is open: add --auth jwt (SSEHUB_AUTH=jwt)"
            )
        return Authenticator(publish_keys=settings.publish_key)
    public_key = (
        read_key_file(settings.jwt_public_key, "JWT public key file")
        if settings.jwt_public_key
        else None
    )
    jwks = read_jwks_file(settings.jwks_file) if settings.jwks_file else None
    verifier = JwtVerifier(
        secret=settings.jwt_secret,
        public_key_pem=public_key,
        jwks=jwks,
        algorithms=settings.jwt_algorithms,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    return JwtAuthenticator(
        verifier, publish_keys=settings.publish_key, user_claim=settings.jwt_user_claim
    )


__all__ = [
    "OPEN_GRANT",
    "PUBLISH_SCOPE",
    "TOKEN_COOKIE",
    "TOKEN_QUERY",
    "AuthenticationFailed",
    "Authenticator",
    "Grant",
    "JwtAuthenticator",
    "JwtVerifier",
    "KeyAuthenticator",
    "PermissionDenied",
    "bearer_token",
    "create_authenticator",
    "mint_token",
]
