"""`SyncHubClient`: the client for scripts without asyncio, with a loop in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio.from_thread

from ssehub.client._calls import HubClient
from ssehub.client._closing import ClosedOnExit
from ssehub.client._stream import Event, EventStream

# How long closing waits for a read that was interrupted (Ctrl-C) to unwind.
_UNWIND_SECONDS = 5.0


class SyncHubClient(ClosedOnExit):
    """`HubClient` for scripts without asyncio: the same methods, blocking.

    Runs an event loop in a helper thread; use it as a context manager (or call
    `close`).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client: HubClient = self._portal.call(_make_client, url, options)
        self._streams: set[SyncEventStream] = set()
        self._closed = False

    def close(self) -> None:
        """Close every stream, the client, and stop its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            stream.close()
        self._portal.call(self._client.aclose)
        self._portal_cm.__exit__(None, None, None)

    def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        """See `HubClient.send`."""
        return self._portal.call(lambda: self._client.send(user_id, data, event=event))

    def broadcast(self, data: object, *, event: str | None = None) -> None:
        """See `HubClient.broadcast`."""
        self._portal.call(lambda: self._client.broadcast(data, event=event))

    def status(self, user_id: str) -> dict[str, Any]:
        """See `HubClient.status`."""
        return self._portal.call(self._client.status, user_id)

    def events(self, user_id: str, **options: Any) -> SyncEventStream:
        """See `HubClient.events`; a blocking iterator.

        Leaving a ``for`` loop over it (``break``, an exception, Ctrl-C) closes the
        stream, as does ``with`` or `SyncEventStream.close`.
        """
        stream = SyncEventStream(self._portal, self._client.events(user_id, **options))
        stream.on_close = self._streams.discard
        self._streams.add(stream)
        return stream


class SyncEventStream(ClosedOnExit):
    """A blocking `EventStream`: iterate it, and close it (or use ``with``) when done."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, stream: EventStream) -> None:
        self.stream = stream
        self.on_close: Callable[[SyncEventStream], None] | None = None
        self._portal = portal
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()

    def __iter__(self) -> Iterator[Event]:
        # A generator, so that leaving a for loop early closes the stream (CPython
        # finalises the abandoned generator at once) instead of leaving the
        # connection to the garbage collector in the loop's thread.
        try:
            while True:
                try:
                    yield next(self)
                except StopIteration:
                    return
        finally:
            self.close()

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        self._idle.clear()
        future = self._portal.start_task_soon(self._read)
        try:
            return future.result()
        except StopAsyncIteration:
            raise StopIteration from None
        except BaseException:
            # Ctrl-C (or another exception in this thread) while the loop's thread
            # reads: stop that read and let it unwind before anything closes the stream.
            future.cancel()
            self._idle.wait(_UNWIND_SECONDS)
            raise

    async def _read(self) -> Event:
        try:
            return await anext(self.stream)
        finally:
            self._idle.set()

    def close(self) -> None:
        """Close the stream's connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._idle.wait(_UNWIND_SECONDS)
        self._portal.call(self.stream.aclose)
        if self.on_close is not None:
            self.on_close(self)


async def _make_client(url: str, options: dict[str, Any]) -> HubClient:
    # httpx binds its pool to the loop that first uses it: make it in the portal's.
    return HubClient(url, **options)
