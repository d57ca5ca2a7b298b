"""Presence events: a user went online or offline, a message reached nobody in time.

The hub tells this module, through a narrow interface, when a stream of a user opens
or closes on this node and when a message is accepted or delivered. From that it
decides, cluster-wide and exactly once, the transitions a backend cares about, and
hands each one as a `PresenceEvent` to every subscribed `PresenceListener` of the node
that emits it (the webhook sender is one; an application's own callback may be another).

The event types and the JSON body are CONTRACT.md's ("Webhooks").
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable
from typing import Final

logger = logging.getLogger("ssehub.presence")

USER_ONLINE: Final = "user.online"
USER_OFFLINE: Final = "user.offline"
MESSAGE_UNDELIVERED: Final = "message.undelivered"
EVENT_TYPES: Final = (USER_ONLINE, USER_OFFLINE, MESSAGE_UNDELIVERED)

DEFAULT_OFFLINE_GRACE: Final = 3.0


def rfc3339(at: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2026-11-30T10:42:21.123Z``."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
        id: unique per event: the webhook's id and the SSE ``id:``.
        type: `USER_ONLINE`, `USER_OFFLINE` or `MESSAGE_UNDELIVERED`.
        user_id: the user.
        at: Unix seconds of the transition (for offline: when the last stream closed).
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
            body["message"] = {
                "id": self.message.id,
                "event": self.message.event,
                "data": self.message.data,
            }
        return body


PresenceListener = Callable[[PresenceEvent], None]
"""Called once per event cluster-wide, on the node that emits it, on the event loop.

It must not block: a listener that has I/O to do queues the event and returns.
"""


class PresenceListeners:
    """The listeners of one node; an exception in one is logged, not raised."""

    def __init__(self) -> None:
        self._listeners: list[PresenceListener] = []

    def subscribe(self, listener: PresenceListener) -> Callable[[], None]:
        """Call ``listener`` with every event this node emits; return an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: PresenceEvent) -> None:
        """Hand ``event`` to every listener, in subscription order."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not cost the others the event
                logger.exception("presence listener %r failed", listener)


class Presence(PresenceListeners):
    """A node's presence tracker: `Hub.presence`; subscribe to its events here.

    Args:
        offline_grace: seconds a user's last stream must stay closed, with none
            reopened anywhere, before ``user.offline`` (a reload makes no noise).
        undelivered_after: seconds after which a message that reached no stream of its
            user yields ``message.undelivered``; None (the default) turns the check off,
            and then it costs nothing.
    """

    def __init__(
        self,
        *,
        offline_grace: float = DEFAULT_OFFLINE_GRACE,
        undelivered_after: float | None = None,
    ) -> None:
        super().__init__()
        self.offline_grace = offline_grace
        self.undelivered_after = undelivered_after
