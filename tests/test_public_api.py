from __future__ import annotations

import ssehub

EXPECTED = [
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


def test_the_public_names_are_exactly_the_documented_ones() -> None:
    assert sorted(ssehub.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert hasattr(ssehub, name), name


def test_the_hub_satisfies_the_messenger_protocol() -> None:
    hub = ssehub.Hub(ssehub.MemoryStore())
    assert isinstance(hub, ssehub.Messenger)
