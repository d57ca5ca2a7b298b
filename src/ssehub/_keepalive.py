"""The keep-alive timer: one for every stream of a node, not a task per stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from ssehub._registry import Registry
from ssehub.connection import Connection
from ssehub.exceptions import StoreUnavailable
from ssehub.stores.base import Store

logger = logging.getLogger("ssehub.hub")

# Streams kept alive per event-loop step. A tick over every stream in one step held the
# loop for the whole of it (1,000 fast-path streams: a 5-6 ms flush of 1,000 sockets)
# while publish requests waited; in slices, a request waits for one slice at most.
TICK_SLICE = 128


class KeepAlive:
    """Every ``interval`` s: a keep-alive on each stream, expired streams closed, and
    this node's presence refreshed in the store.

    Args:
        interval: seconds between ticks.
        users: the users' streams (their presence is refreshed).
        others: other registries whose streams get keep-alives too.
        store: where presence is refreshed.
        drop_slow: closes a stream that cannot take a keep-alive.
        heartbeat: told the users with streams here, every tick.
    """

    def __init__(
        self,
        interval: float,
        users: Registry,
        others: Sequence[Registry],
        store: Store,
        *,
        drop_slow: Callable[[Connection], None],
        heartbeat: Callable[[list[str]], None],
    ) -> None:
        self.interval = interval
        self._registries = (users, *others)
        self._users = users
        self._store = store
        self._drop_slow = drop_slow
        self._heartbeat = heartbeat

    async def run(self) -> None:
        """Tick for ever (the hub owns the task)."""
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            for registry in self._registries:
                connections = registry.connections()
                for start in range(0, len(connections), TICK_SLICE):
                    if start:
                        await asyncio.sleep(0)  # the slice's writes go out, requests run
                    registry.tick(connections[start : start + TICK_SLICE], now, self._drop_slow)
            user_ids = list(self._users.streams)
            if user_ids:
                try:
                    await self._store.refresh_presence(user_ids)
                except StoreUnavailable:
                    logger.warning("could not refresh presence: store unavailable")
                # After the refresh: a store that times presence by the ticks has seen
                # this one.
                self._heartbeat(user_ids)
