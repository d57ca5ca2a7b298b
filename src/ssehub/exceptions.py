"""The exceptions ssehub raises, all under one base.

```
SsehubError
├── ConfigurationError        bad settings, raised at start-up
├── InvalidInput (ValueError) a user id, event name, id or payload ssehub refuses
│   ├── PayloadTooLarge
│   └── IdempotencyKeyReused  an Idempotency-Key sent again with another request (409)
├── LimitExceeded             a connection or rate limit was reached (HTTP 429)
│   └── ServerFull            this process holds all the streams it may (HTTP 503)
├── AuthenticationFailed      no credentials, or bad ones (HTTP 401)
├── PermissionDenied          good credentials that do not allow this (HTTP 403)
└── StoreUnavailable (ConnectionError)  the store cannot be reached right now
```

`HTTP_STATUS` is the one table between these and HTTP statuses: the server answers
with it (`http_status`) and the client turns an answer back into an error with it
(`error_class`).
"""

from __future__ import annotations


class SsehubError(Exception):
    """Base of every error ssehub raises on purpose.

    Attributes:
        status: for an error the client made from a hub's answer, the HTTP status;
            None otherwise.
        retry_after: for such an error, the seconds the hub's ``Retry-After`` asked to
            wait, if it sent one.
    """

    status: int | None = None
    retry_after: float | None = None


class ConfigurationError(SsehubError):
    """A setting is missing, malformed or inconsistent; raised at start-up."""


class InvalidInput(SsehubError, ValueError):
    """Input that ssehub refuses: a bad user id, event name, event id or payload."""


class PayloadTooLarge(InvalidInput):
    """A message or a batch is larger than the configured limit."""


class IdempotencyKeyReused(InvalidInput):
    """An ``Idempotency-Key`` used already for another request (route, target or body)."""

    def __init__(self, detail: str = "Idempotency-Key already used for another request") -> None:
        super().__init__(detail)


class LimitExceeded(SsehubError):
    """A configured limit (connections per user, in total) was reached."""


class ServerFull(LimitExceeded):
    """The process holds as many streams as it may; another node may have room."""


class AuthenticationFailed(SsehubError):
    """No credentials were given, or they are invalid or expired."""


class PermissionDenied(SsehubError):
    """The credentials are valid but do not allow this action."""


class StoreUnavailable(SsehubError, ConnectionError):
    """The store did not answer; the operation may be retried later."""


HTTP_STATUS: dict[type[SsehubError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    IdempotencyKeyReused: 409,  # not 422: FastAPI answers its own validation errors so
    AuthenticationFailed: 401,
    PermissionDenied: 403,
    LimitExceeded: 429,
    StoreUnavailable: 503,  # listed before ServerFull: the error a client raises for 503
    ServerFull: 503,
}
"""The HTTP status of each error; a subclass not listed has its nearest base's."""

# Answers the server gives without one of these errors (FastAPI's own, and routes not
# mounted): the client still raises a meaningful error for them.
_OTHER_STATUSES: dict[int, type[SsehubError]] = {404: InvalidInput, 422: InvalidInput}
_ERROR_CLASS: dict[int, type[SsehubError]] = {
    # reversed: of the errors that share a status, the first listed is kept
    **{status: kind for kind, status in reversed(HTTP_STATUS.items())},
    **_OTHER_STATUSES,
}


def http_status(error: SsehubError) -> int:
    """The status the server answers ``error`` with; 500 for an error not in the table."""
    for kind in type(error).__mro__:
        status = HTTP_STATUS.get(kind)
        if status is not None:
            return status
    return 500


def error_class(status: int) -> type[SsehubError]:
    """The error a client raises for a hub's answer with ``status`` (400 and up).

    `SsehubError` itself for a status the hub does not answer with on purpose.
    """
    return _ERROR_CLASS.get(status, SsehubError)
