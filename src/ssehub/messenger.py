"""The one interface application code depends on to reach users."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ssehub.stores.base import UserState


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A message for one user, as given to `Messenger.send_many`."""

    user_id: str
    data: object
    event: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's state as the hub sees it.

    Attributes:
        user_id: the user.
        status: connected, disconnected or unknown.
        connections: open streams on every node.
        last_seen: when a stream of the user was last open, or None.
        pending: messages kept for the user and not yet delivered.
    """

    user_id: str
    status: UserState
    connections: int
    last_seen: datetime.datetime | None
    pending: int

    def as_json(self) -> dict[str, object]:
        """The shape of ``GET /sse/users/{user_id}``."""
        return {
            "user_id": self.user_id,
            "status": self.status.value,
            "connections": self.connections,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "pending": self.pending,
        }


@runtime_checkable
class Messenger(Protocol):
    """Sends text or objects to users, from any layer of an application.

    A ``str`` is sent as it is, one ``data:`` line per line; anything else goes as
    compact JSON with its own keys. Each message gets an id, increasing per user,
    and reaches every open stream of the user in order, or waits for the next one.
    """

    async def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        """Send one message to a user; return its event id."""
        ...

    async def send_many(self, messages: Iterable[Message]) -> list[str]:
        """Send several messages in one go; return their ids in order."""
        ...

    async def broadcast(self, data: object, *, event: str | None = None) -> None:
        """Send a message to every connected user."""
        ...

    async def status(self, user_id: str) -> UserStatus:
        """Tell whether a user is connected, disconnected or unknown."""
        ...

    async def disconnect(self, user_id: str) -> None:
        """Close every open stream of a user and mark them disconnected."""
        ...
