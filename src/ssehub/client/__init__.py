"""A Python client for an ssehub server: follow a user's stream, publish, read state.

``async for event in HubClient(url).events("alice")`` yields the user's events and keeps
going across drops and server restarts: it reconnects with back-off, sends
``Last-Event-ID`` so nothing is missed or repeated, and honours the server's ``retry:``
hint. `SyncHubClient` offers the same to scripts without asyncio.

Inside: reading a stream (`EventStream`, in ``_stream``), the HTTP calls (`HubClient`,
in ``_calls``), the blocking wrapper (`SyncHubClient`, in ``_sync``), and how a hub's
answers become errors and which of them are worth retrying (``_errors``).
"""

from __future__ import annotations

from ssehub.client._calls import HubClient, Token
from ssehub.client._errors import HubUnreachable
from ssehub.client._stream import (
    CONNECTED,
    DISCONNECTED,
    EXPIRED,
    KEEPALIVE,
    RESET,
    Event,
    EventStream,
)
from ssehub.client._sync import SyncEventStream, SyncHubClient

__all__ = [
    "CONNECTED",
    "DISCONNECTED",
    "EXPIRED",
    "KEEPALIVE",
    "RESET",
    "Event",
    "EventStream",
    "HubClient",
    "HubUnreachable",
    "SyncEventStream",
    "SyncHubClient",
    "Token",
]
