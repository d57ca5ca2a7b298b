"""Fan-out for stores that serve one process: everything goes straight to the listener."""

from __future__ import annotations

from ssehub.stores.base import Store


class LocalFanout(Store):
    """A store whose only listener is this process's hub (memory, SQLite).

    Appends call the listener themselves; there are no other nodes to subscribe to or
    to tell about broadcasts and disconnects.
    """

    presence_at_once = True  # memory's dictionaries; SQLite's buffer for its writer
    watch_at_once = True  # no subscription: SQLite only notes the user's session

    async def watch(self, user_id: str) -> None:
        return None

    async def unwatch(self, user_id: str) -> None:
        return None

    async def publish_broadcast(self, payload: bytes) -> None:
        if self._listener is not None:
            self._listener.on_broadcast(payload)

    async def publish_disconnect(self, user_id: str) -> None:
        if self._listener is not None:
            self._listener.on_disconnect(user_id)
