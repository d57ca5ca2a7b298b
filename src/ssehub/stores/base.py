"""The store contract: a per-user log of encoded events, live fan-out and presence.

A store moves bytes. It gives every appended event an id that increases per user,
reads a user's events after an id, tells its listener about every new event (also
those appended by other nodes sharing the store), and keeps who is connected.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol

from ssehub.events import StoredEvent

PresenceChange = tuple[str, int, str | None]
"""A user's presence on this node: ``(user_id, connections, cursor or None)``."""


class UserState(enum.StrEnum):
    """Where a user stands: the sample's Connected/Disconnected, plus never seen."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How much of each user's history a store keeps.

    Attributes:
        max_events: events kept per user; older ones are dropped first.
        max_age: seconds an event is kept.
    """

    max_events: int = 1000
    max_age: float = 24 * 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ReadResult:
    """Events read after an id.

    Attributes:
        events: the events, oldest first.
        reset: True when events after the requested id are no longer kept, or the
            id is not one the store gave out: the reader missed something.
    """

    events: list[StoredEvent]
    reset: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class UserRecord:
    """What a store knows of one user.

    Attributes:
        user_id: the user.
        known: the user has opened a stream at least once.
        connections: open streams, on every node.
        last_seen: Unix time a stream of the user was last open, or None.
        cursor: id of the last event delivered to the user, or None.
        pending: kept events after the cursor (the offline queue).
    """

    user_id: str
    known: bool
    connections: int
    last_seen: float | None
    cursor: str | None
    pending: int

    @property
    def state(self) -> UserState:
        """Connected, disconnected or unknown."""
        if self.connections > 0:
            return UserState.CONNECTED
        return UserState.DISCONNECTED if self.known else UserState.UNKNOWN


class StoreListener(Protocol):
    """Receives what the store fans out; called on the event loop, must not block."""

    def on_event(self, user_id: str, event: StoredEvent) -> None:
        """A new event for a user this node watches, in id order per user."""

    def on_broadcast(self, payload: bytes) -> None:
        """A broadcast: append ``payload`` for this node's connected users."""

    def on_disconnect(self, user_id: str) -> None:
        """Close this node's streams of ``user_id``."""


class Store(abc.ABC):
    """A per-user event log with live fan-out and presence.

    Every method may raise `ssehub.exceptions.StoreUnavailable` when the backend
    cannot be reached.
    """

    #: Whether several processes may share this store (and so run as one hub).
    shared: bool = False
    #: Whether `append_to_all` writes the payload once whatever the number of users:
    #: the hub then passes every user in one call instead of in chunks.
    broadcast_once: bool = False
    #: Whether `set_presence_many` returns without waiting for anything (it writes to
    #: memory, or to a buffer its own thread commits): a stream that opens then writes
    #: its user's count itself instead of waiting for the hub's writer task. (A
    #: subclass whose `set_presence` waits for anything must say False.)
    presence_at_once: bool = False
    #: Whether `watch` returns without waiting for anything (nothing to subscribe to,
    #: or only this process's memory to change): no other stream of the user can open
    #: while it runs, so none needs to wait for it. (A subclass whose `watch` waits
    #: for anything must say False.)
    watch_at_once: bool = False

    def __init__(self, *, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._listener: StoreListener | None = None

    def bind(self, listener: StoreListener) -> None:
        """Set the one listener that receives live events, broadcasts and disconnects."""
        self._listener = listener

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections and files, start background work."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work, flush what was accepted, release resources."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailable otherwise."""

    @abc.abstractmethod
    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        """Append ``(user_id, payload)`` pairs, in order; return the stored events.

        When this returns, the events are as durable as the store promises, and the
        listener of every node watching the users is told about them in id order.
        """

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        """Append one payload to each user's log (a broadcast); return how many.

        Each user gets the payload once, as with `append_many`, and no user not listed
        gets it. A store that can give every copy the same id overrides this, so the
        frame is built once for all (the listener hears the same `StoredEvent` for
        each user); one that also stores it once sets `broadcast_once`.
        """
        return len(await self.append_many([(user_id, payload) for user_id in user_ids]))

    async def append(self, user_id: str, payload: bytes) -> StoredEvent:
        """Append one event for a user; see `append_many`."""
        (event,) = await self.append_many([(user_id, payload)])
        return event

    @abc.abstractmethod
    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        """Read up to ``limit`` kept events of a user with an id after ``after_id``.

        ``after_id`` None reads from the oldest kept event. Sets ``reset`` when events
        after ``after_id`` were dropped by retention, or ``after_id`` is beyond the
        newest id the store gave out for the user.
        """

    @abc.abstractmethod
    async def watch(self, user_id: str) -> None:
        """This node has streams for the user: deliver its events to the listener."""

    @abc.abstractmethod
    async def unwatch(self, user_id: str) -> None:
        """This node has no more streams for the user."""

    @abc.abstractmethod
    async def publish_broadcast(self, payload: bytes) -> None:
        """Have every node (this one too) append ``payload`` for its connected users."""

    @abc.abstractmethod
    async def publish_disconnect(self, user_id: str) -> None:
        """Have every node (this one too) close the user's streams."""

    @abc.abstractmethod
    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        """Record this node's open streams of a user and, if given, the delivery cursor.

        Marks the user known. ``connections`` is this node's count only; the store
        sums over nodes.
        """

    async def set_presence_many(self, changes: Sequence[PresenceChange]) -> None:
        """`set_presence` for several users, in order; a store may write them at once."""
        for user_id, connections, cursor in changes:
            await self.set_presence(user_id, connections=connections, cursor=cursor)

    @abc.abstractmethod
    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        """Keep this node's presence of these users alive (called every keep-alive)."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> UserRecord:
        """What the store knows of a user (``known`` False if never connected)."""

    @abc.abstractmethod
    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        """Known users ordered by id, after ``after``, optionally in one state."""
