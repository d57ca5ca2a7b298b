"""Who may subscribe as a user, and who may publish.

`Authenticator` works on plain headers and query parameters, so the ASGI routes and
the fast path share it. In ``open`` mode everyone may do everything, as in the sample.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Mapping, Sequence
from http.cookies import CookieError, SimpleCookie

from ssehub.exceptions import AuthenticationFailed, PermissionDenied

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
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie_header = headers.get("cookie")
    if cookie_header:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(cookie_header)
        except CookieError:  # a malformed cookie header is just no cookie
            cookies = SimpleCookie()
        morsel = cookies.get(TOKEN_COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    token = query.get(TOKEN_QUERY)
    return token or None


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


__all__ = [
    "OPEN_GRANT",
    "TOKEN_COOKIE",
    "TOKEN_QUERY",
    "AuthenticationFailed",
    "Authenticator",
    "Grant",
    "PermissionDenied",
    "bearer_token",
]
