"""A hub's error answers as exceptions, and which of them are worth trying again."""

from __future__ import annotations

import email.utils
import time

import httpx
import orjson

from ssehub.exceptions import SsehubError, error_class

# Gateways (nginx, a load balancer) answer these while the hub behind them restarts.
_TRANSIENT_STATUSES = frozenset({502, 503, 504})


class HubUnreachable(SsehubError, ConnectionError):
    """The hub did not answer (refused, timed out, or the connection broke)."""


def unreachable(url: str, exc: httpx.HTTPError) -> HubUnreachable:
    """The error for a request to ``url`` that got no answer."""
    return HubUnreachable(f"cannot reach the hub at {url} ({exc or type(exc).__name__})")


def error_for(response: httpx.Response) -> SsehubError:
    """The error for a hub's answer of 400 or above (see `ssehub.exceptions.HTTP_STATUS`).

    It carries the answer's ``status`` and ``retry_after``.
    """
    try:
        detail = str(orjson.loads(response.content)["detail"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = response.reason_phrase or "error"
    error = error_class(response.status_code)(f"{response.status_code} {detail}")
    error.status = response.status_code
    error.retry_after = _retry_after(response.headers.get("retry-after"))
    return error


def raise_for(response: httpx.Response) -> None:
    """Raise `error_for` the answer if it is an error."""
    if response.status_code >= 400:
        raise error_for(response)


def transient(error: SsehubError) -> bool:
    """Whether trying again later may succeed.

    True for no answer at all, a 502/503/504, and a 429 that says when to come back
    (``Retry-After``); every other answer would be the same the next time.
    """
    if isinstance(error, HubUnreachable):
        return True
    if error.status == 429:
        return error.retry_after is not None
    return error.status in _TRANSIENT_STATUSES


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date; None if absent or malformed."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
