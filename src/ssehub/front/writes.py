"""Writes gathered over one event-loop step and sent together at its end (`WriteBatch`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Protocol

logger = logging.getLogger("ssehub.front")


class Flushable(Protocol):
    """A connection with bytes waiting for the end of the loop step."""

    def flush(self) -> None:
        """Send what waits, in one ``transport.write``."""


class WriteBatch:
    """Connections written to during one event-loop step, flushed together at its end.

    A publish request delivers to many streams in one step. Sending each socket's
    bytes as they come spreads the system calls between Python work, and every one
    then wakes a reader that had gone back to sleep; sent together at the end of the
    step, they cost one ``transport.write`` per connection however many frames it got.
    """

    __slots__ = ("_scheduled", "_waiting", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._waiting: list[Flushable] = []
        self._scheduled = False
        self.loop = loop  # the loop it belongs to, if one (`loop_batch`)

    def add(self, connection: Flushable) -> None:
        """Flush ``connection`` at the end of this loop step (add it once a step)."""
        self._waiting.append(connection)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Flush every connection added since the last flush."""
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            try:
                connection.flush()
            except Exception:  # one broken socket must not hold back the others
                logger.exception("writing to a stream failed")


class _ThisThread(threading.local):
    batch: WriteBatch | None = None


_this_thread = _ThisThread()


def loop_batch() -> WriteBatch:
    """The running loop's `WriteBatch` (a thread runs one loop at a time)."""
    loop = asyncio.get_running_loop()
    batch = _this_thread.batch
    if batch is None or batch.loop is not loop:
        batch = _this_thread.batch = WriteBatch(loop)
    return batch
