"""Replay: what a stream is sent from the store before it goes live."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ssehub import events
from ssehub.connection import Connection
from ssehub.stores.base import Store


def reset_frame(after: str | None) -> bytes:
    """The ``reset`` notice: events after ``after`` are no longer kept."""
    notice = {"reason": "history_trimmed", "last_event_id": after}
    payload = events.encode_payload(orjson.dumps(notice), event=events.RESET_EVENT, is_json=True)
    return events.frame(None, payload)


async def replay(
    store: Store,
    connection: Connection,
    after: str | None,
    *,
    batch: int,
    drop_slow: Callable[[Connection], None],
    frame: Callable[[events.StoredEvent], bytes] = events.StoredEvent.frame,
    key: str | None = None,
) -> tuple[str | None, int]:
    """Send a stream what its log holds after ``after``, then what came live meanwhile.

    Live frames wait in ``connection.backlog`` while the store is read; they go out
    afterwards, skipping those already replayed, so replay and live meet without a gap
    or a duplicate.

    Args:
        store: where the log is.
        connection: the stream, registered, with its greeting written.
        after: the id to start after; None for the oldest kept event.
        batch: events read per round trip.
        drop_slow: closes a stream that cannot keep up.
        frame: builds an event's frame (the presence feed frames its own).
        key: the log to read; the connection's user by default.

    Returns:
        The newest id the stream now stands after (None if none, or after a reset with
        nothing kept), and how many events were replayed.
    """
    sink = connection.sink
    log = connection.user_id if key is None else key
    first = True
    replayed = 0
    while True:
        result = await store.read_after(log, after, limit=batch)
        if first and result.reset:
            sink.write(reset_frame(after))
            after = None  # an id the log does not hold is no position to stand after
        elif first and after is not None:
            connection.last_key = events.event_key(after)
        first = False
        for event in result.events:
            connection.last_key = event.key
            sink.write(frame(event))
        replayed += len(result.events)
        if result.events:
            after = result.events[-1].id
        if len(result.events) < batch:
            break
    backlog, connection.backlog = connection.backlog or [], None
    for event_key, data in backlog:
        if not connection.deliver(event_key, data):
            drop_slow(connection)
            break
    return after, replayed
