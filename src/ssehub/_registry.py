"""The connection registry: this node's open streams, by user (or by feed key)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from ssehub import events
from ssehub.connection import Connection
from ssehub.exceptions import LimitExceeded, ServerFull
from ssehub.limits import Limits


class Registry:
    """Open streams by key, with the limits that bound them.

    Args:
        limits: streams per node and per key.

    Attributes:
        streams: key (a user id) -> its open streams; a key is present only while it
            has at least one.
        open_count: streams open in this registry.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.streams: dict[str, list[Connection]] = {}
        self.open_count = 0

    def add(self, connection: Connection, *, node_open: int) -> bool:
        """Register a stream; True if it is the first of its key here.

        ``node_open`` is every stream open on the node (all registries), for the
        node's limit.

        Raises:
            ServerFull: too many streams on this node.
            LimitExceeded: too many streams for this key.
        """
        streams = self.streams.get(connection.user_id)
        if node_open >= self.limits.max_connections:
            raise ServerFull("too many open streams on this server")
        if streams is not None and len(streams) >= self.limits.max_connections_per_user:
            raise LimitExceeded("too many open streams for this user")
        first = streams is None
        if streams is None:
            streams = self.streams[connection.user_id] = []
        streams.append(connection)
        self.open_count += 1
        return first

    def remove(self, connection: Connection) -> bool | None:
        """Forget a stream: None if it was not registered, else True if it was the last
        of its key."""
        streams = self.streams.get(connection.user_id)
        if streams is None or connection not in streams:
            return None
        streams.remove(connection)
        self.open_count -= 1
        if streams:
            return False
        del self.streams[connection.user_id]
        return True

    def count(self, key: str) -> int:
        """Streams open for ``key``."""
        return len(self.streams.get(key, ()))

    def close_key(self, key: str, final: bytes | None = None) -> None:
        """Close every stream of ``key`` (each front door then releases its own)."""
        for connection in list(self.streams.get(key, ())):
            connection.close(final)

    def close_all(self, finals: Sequence[bytes | None] = (None,)) -> None:
        """Close every stream, each with the next of ``finals`` in turn."""
        turn = itertools.cycle(finals)
        for streams in list(self.streams.values()):
            for connection in list(streams):
                connection.close(next(turn))

    def connections(self) -> list[Connection]:
        """Every open stream now (a copy: the registry may change while it is used)."""
        return [connection for streams in self.streams.values() for connection in streams]

    @staticmethod
    def tick(
        connections: list[Connection], now: float, drop_slow: Callable[[Connection], None]
    ) -> None:
        """Keep-alive each stream still open; close those whose credentials expired by
        ``now``."""
        for connection in connections:
            if connection.closed:  # closed since the list was taken
                continue
            if connection.expires_at is not None and now >= connection.expires_at:
                connection.close(events.text_frame("token expired", event="expired"))
            elif not connection.sink.write(events.KEEPALIVE_FRAME):
                drop_slow(connection)
