"""The exceptions ssehub raises, all under one base.

```
SsehubError
├── ConfigurationError        bad settings, raised at start-up
├── InvalidInput (ValueError) a user id, event name, id or payload ssehub refuses
│   └── PayloadTooLarge
├── LimitExceeded             a connection or rate limit was reached (HTTP 429)
│   └── ServerFull            this process holds all the streams it may (HTTP 503)
├── AuthenticationFailed      no credentials, or bad ones (HTTP 401)
├── PermissionDenied          good credentials that do not allow this (HTTP 403)
└── StoreUnavailable (ConnectionError)  the store cannot be reached right now
```
"""

from __future__ import annotations


class SsehubError(Exception):
    """Base of every error ssehub raises on purpose."""


class ConfigurationError(SsehubError):
    """A setting is missing, malformed or inconsistent; raised at start-up."""


class InvalidInput(SsehubError, ValueError):
    """Input that ssehub refuses: a bad user id, event name, event id or payload."""


class PayloadTooLarge(InvalidInput):
    """A message or a batch is larger than the configured limit."""


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
