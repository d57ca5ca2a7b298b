"""ssehub: Server-Sent Events to specific users, as a library and as a hub server."""

from __future__ import annotations

__version__ = "0.1.0"

from ssehub.api import create_router, messenger_dependency
from ssehub.app import create_app
from ssehub.auth import Authenticator, Grant
from ssehub.events import StoredEvent, encode_payload
from ssehub.exceptions import (
    AuthenticationFailed,
    ConfigurationError,
    IdempotencyKeyReused,
    InvalidInput,
    LimitExceeded,
    PayloadTooLarge,
    PermissionDenied,
    SsehubError,
    StoreUnavailable,
)
from ssehub.hub import Hub
from ssehub.limits import Limits
from ssehub.messenger import Message, Messenger, UserStatus
from ssehub.presence import PresenceEvent, PresenceListener, UndeliveredMessage
from ssehub.settings import Settings
from ssehub.stores import MemoryStore, Retention, Store, UserState, open_store

__all__ = [
    "AuthenticationFailed",
    "Authenticator",
    "ConfigurationError",
    "Grant",
    "Hub",
    "IdempotencyKeyReused",
    "InvalidInput",
    "LimitExceeded",
    "Limits",
    "MemoryStore",
    "Message",
    "Messenger",
    "PayloadTooLarge",
    "PermissionDenied",
    "PresenceEvent",
    "PresenceListener",
    "Retention",
    "Settings",
    "SsehubError",
    "Store",
    "StoreUnavailable",
    "StoredEvent",
    "UndeliveredMessage",
    "UserState",
    "UserStatus",
    "__version__",
    "create_app",
    "create_router",
    "encode_payload",
    "messenger_dependency",
    "open_store",
]
