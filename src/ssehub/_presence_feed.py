"""The presence feed: streams of ``/sse/events/presence``, served from the presence log."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ssehub import events
from ssehub._registry import Registry
from ssehub._replay import replay
from ssehub.connection import Connection
from ssehub.exceptions import StoreUnavailable
from ssehub.presence import event_from_log
from ssehub.stores._presence import PRESENCE_LOG
from ssehub.stores.base import Store


def feed_frame(event: events.StoredEvent) -> bytes:
    """A presence log entry as SSE: ``event:`` the type, ``data:`` the body with its id."""
    type_, body = event_from_log(event.id, event.payload)
    return events.frame(event.id, events.encode_payload(body, event=type_, is_json=True))


class PresenceFeed:
    """The presence streams of this node: live from connecting, or after an id.

    Args:
        store: holds the presence log and fans it out to every node.
        registry: the feed's own streams (not users': broadcasts never reach them).
        replay_batch: log entries read per round trip when resuming.
        drop_slow: closes a stream that cannot keep up.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        replay_batch: int,
        drop_slow: Callable[[Connection], None],
    ) -> None:
        self._store = store
        self.registry = registry
        self._batch = replay_batch
        self._drop_slow = drop_slow

    async def open(
        self, connection: Connection, *, node_open: int, last_event_id: str | None = None
    ) -> Connection:
        """Register a presence stream and send what came after ``last_event_id``.

        Raises:
            LimitExceeded: too many streams.
            StoreUnavailable: the store cannot be read; nothing was written.
        """
        sink = connection.sink
        first = self.registry.add(connection, node_open=node_open)
        try:
            if first:
                await self._store.watch(PRESENCE_LOG)
            sink.write(events.KEEPALIVE_FRAME)
            if last_event_id is None:
                connection.backlog = None  # live from now: nothing to replay
            else:
                await replay(
                    self._store,
                    connection,
                    last_event_id,
                    batch=self._batch,
                    drop_slow=self._drop_slow,
                    frame=feed_frame,
                )
        except BaseException:
            self.release(connection)
            raise
        return connection

    def release(self, connection: Connection) -> bool:
        """Forget a presence stream; False if it was not registered."""
        last = self.registry.remove(connection)
        if last is None:
            return False
        connection.closed = True
        return True

    async def unwatch_if_idle(self) -> None:
        """Stop receiving the log when no presence stream is open here."""
        if not self.registry.count(PRESENCE_LOG):
            with contextlib.suppress(StoreUnavailable):
                await self._store.unwatch(PRESENCE_LOG)

    def on_event(self, event: events.StoredEvent) -> None:
        """A new presence log entry: to every presence stream of this node."""
        streams = self.registry.streams.get(PRESENCE_LOG)
        if not streams:
            return
        data = feed_frame(event)
        for connection in list(streams):
            if not connection.deliver(event.key, data):
                self._drop_slow(connection)
