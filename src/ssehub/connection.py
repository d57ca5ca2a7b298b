"""One open stream as the hub sees it: something frames are written to.

The hub knows nothing of ASGI or sockets. A front door (the ASGI route, or the fast
path that writes to the transport) gives the hub a `FrameSink`, and the hub writes
ready-made frames to it.
"""

from __future__ import annotations

import time
from typing import Protocol


class FrameSink(Protocol):
    """Where a stream's bytes go."""

    def write(self, data: bytes) -> bool:
        """Queue bytes for the client; False if its buffer is over its bound."""
        ...

    def close(self, final: bytes | None = None) -> None:
        """End the stream, after ``final`` if given. Idempotent."""
        ...


class Connection:
    """An open stream of one user.

    While the hub replays history, live frames wait in ``backlog``; afterwards a
    frame goes out only if its key is after the last one sent, so a message is never
    sent twice and replay and live delivery meet without a gap.
    """

    __slots__ = ("backlog", "closed", "expires_at", "last_key", "opened_at", "sink", "user_id")

    def __init__(self, user_id: str, sink: FrameSink, *, expires_at: float | None = None) -> None:
        self.user_id = user_id
        self.sink = sink
        self.last_key: tuple[int, int] = (0, 0)
        self.backlog: list[tuple[tuple[int, int], bytes]] | None = []
        self.closed = False
        self.opened_at = time.monotonic()
        self.expires_at = expires_at

    def deliver(self, key: tuple[int, int], data: bytes) -> bool:
        """Send a live frame unless already sent; False if the client is too slow."""
        if self.backlog is not None:
            self.backlog.append((key, data))
            return True
        if key <= self.last_key or self.closed:
            return True
        self.last_key = key
        return self.sink.write(data)

    def close(self, final: bytes | None = None) -> None:
        """End the stream (the front door then releases it from the hub)."""
        if not self.closed:
            self.closed = True
            self.sink.close(final)
