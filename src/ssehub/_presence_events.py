"""Presence events as data: the event, its JSON body, listeners, and the log entries.

`ssehub.presence` re-exports what is public here; the hub's presence tracker is there.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import orjson

from ssehub.stores._presence import MESSAGE_UNDELIVERED, USER_OFFLINE, USER_ONLINE, rfc3339

logger = logging.getLogger("ssehub.presence")

EVENT_TYPES: Final = (USER_ONLINE, USER_OFFLINE, MESSAGE_UNDELIVERED)


@dataclasses.dataclass(frozen=True, slots=True)
class UndeliveredMessage:
    """The message of a ``message.undelivered`` event.

    Attributes:
        id: the message's event id (as the publish answer gave it).
        event: its event name, or None.
        data: its data as published: a string, or the JSON value.
    """

    id: str
    event: str | None
    data: object


@dataclasses.dataclass(frozen=True, slots=True)
class PresenceEvent:
    """One transition, as webhooks and ``/sse/events/presence`` carry it.

    Attributes:
        id: unique per event: the webhook's id and the SSE ``id:`` (an id of the
            presence log, so ``Last-Event-ID`` resumes after it).
        type: `USER_ONLINE`, `USER_OFFLINE` or `MESSAGE_UNDELIVERED`.
        user_id: the user.
        at: Unix seconds of the transition (for offline: when the last stream closed;
            for undelivered: when the deadline passed).
        message: for `MESSAGE_UNDELIVERED`, the message.
    """

    id: str
    type: str
    user_id: str
    at: float
    message: UndeliveredMessage | None = None

    def body(self) -> dict[str, object]:
        """The JSON body of CONTRACT.md, with ``at`` in RFC 3339 UTC."""
        body: dict[str, object] = {
            "id": self.id,
            "type": self.type,
            "user_id": self.user_id,
            "at": rfc3339(self.at),
        }
        if self.message is not None:
            body["message"] = message_json(self.message)
        return body


PresenceListener = Callable[[PresenceEvent], None]
"""Called once per event cluster-wide, on the node that emits it, on the event loop.

It must not block: a listener that has I/O to do queues the event and returns.
"""


class PresenceListeners:
    """The listeners of one node; an exception in one is logged, not raised."""

    def __init__(self) -> None:
        self._listeners: list[PresenceListener] = []
        self._flushes: list[Callable[[], Awaitable[None]]] = []

    def subscribe(
        self, listener: PresenceListener, *, flush: Callable[[], Awaitable[None]] | None = None
    ) -> Callable[[], None]:
        """Call ``listener`` with every event this node emits; return an unsubscribe.

        ``flush``, if given, is awaited once the node stops, after its last events and
        while the store is still open: a listener that keeps events (the webhook
        outbox) writes the last ones then.
        """
        self._listeners.append(listener)
        if flush is not None:
            self._flushes.append(flush)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if flush in self._flushes:
                self._flushes.remove(flush)

        return unsubscribe

    async def flush_listeners(self) -> None:
        """Await every listener's ``flush`` (the node stops); a failing one is logged."""
        for flush in list(self._flushes):
            try:
                await flush()
            except Exception:  # one listener's bug must not cost the others their flush
                logger.exception("presence listener flush %r failed", flush)

    def emit(self, event: PresenceEvent) -> None:
        """Hand ``event`` to every listener, in subscription order."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not cost the others the event
                logger.exception("presence listener %r failed", listener)

    async def events(self, *, max_queue: int = 1000) -> AsyncIterator[PresenceEvent]:
        """Iterate over the events this node emits from now on, until the loop is left.

        Up to ``max_queue`` events wait for a slow reader; past that the oldest is
        dropped (and logged): the iterator never holds the hub back.
        """
        queue: collections.deque[PresenceEvent] = collections.deque()
        ready = asyncio.Event()

        def put(event: PresenceEvent) -> None:
            if len(queue) >= max_queue:
                dropped = queue.popleft()
                logger.warning("presence iterator too slow: dropped event %s", dropped.id)
            queue.append(event)
            ready.set()

        unsubscribe = self.subscribe(put)
        try:
            while True:
                await ready.wait()
                ready.clear()
                while queue:
                    yield queue.popleft()
        finally:
            unsubscribe()


class TextPayload(bytes):
    """An encoded payload whose data was published as a string (not a JSON value).

    The hub marks payloads so only while undelivered messages are tracked, so that a
    ``message.undelivered`` event carries the data as it was given. No attributes: it
    costs a copy, not an object the garbage collector has to follow.
    """

    __slots__ = ()


def as_published(payload: bytes, text: bool) -> tuple[object, str | None]:
    """The data and event name an encoded payload was made from.

    ``text``: the data was a string (see `TextPayload`); otherwise it is parsed back
    from its compact JSON (and given as text if it is not JSON).
    """
    name = None
    lines: list[str] = []
    for line in payload.decode().split("\n")[:-1]:
        if line.startswith("event: "):
            name = line[7:]
        else:
            lines.append(line[6:])
    joined = "\n".join(lines)
    if text:
        return joined, name
    try:
        return orjson.loads(joined), name
    except orjson.JSONDecodeError:
        return joined, name


def message_json(message: UndeliveredMessage) -> dict[str, object]:
    return {"id": message.id, "event": message.event, "data": message.data}


def event_from_log(event_id: str, payload: bytes) -> tuple[str, bytes]:
    """The type and JSON body (with its id first) of a presence log entry."""
    body = orjson.loads(payload)
    return str(body.get("type")), orjson.dumps({"id": event_id, **body})
