"""Writing this node's stream counts and delivery cursors to the store."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ssehub.exceptions import StoreUnavailable
from ssehub.stores.base import Store

logger = logging.getLogger("ssehub.hub")

_RETRY_SECONDS = 1.0
_BATCH = 1000  # users per store call


class StorePresence:
    """Keeps the store's record of this node's streams per user, and the cursors.

    A change is written by one worker, so a user's counts reach the store in order;
    the stream that caused it may wait for the write (`changed`). A store whose
    presence writes return at once (`Store.presence_at_once`) is written by the
    opening stream itself.

    Args:
        store: the store written to.
        count: this node's open streams of a user.
        spawn: starts an owned background task.

    Attributes:
        delivered: user -> id of the newest event delivered to one of this node's
            streams of the user (written as the user's cursor with the count, and
            forgotten when the user has no stream here any more).
    """

    def __init__(
        self,
        store: Store,
        count: Callable[[str], int],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self._store = store
        self._count = count
        self._spawn = spawn
        self.delivered: dict[str, str] = {}
        self._dirty: dict[str, list[asyncio.Future[None]]] = {}
        self._wakeup = asyncio.Event()
        self.closing = False

    async def changed(self, user_id: str) -> None:
        """Write the user's count soon, and wait for it.

        Raises:
            StoreUnavailable: the store could not be written.
        """
        if self._store.presence_at_once:
            # Nothing to wait for, so nothing to share: written now, without a future
            # and the wake-up of the writer task and then of the stream's own task.
            # The store takes calls in order, so counts still reach it in order.
            await self._store.set_presence_many(
                [(user_id, self._count(user_id), self.delivered.get(user_id))]
            )
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._dirty.setdefault(user_id, []).append(future)
        self._wakeup.set()
        await future

    def mark(self, user_id: str) -> None:
        """Write the user's count soon; nobody waits."""
        self._dirty.setdefault(user_id, [])
        self._wakeup.set()

    async def run(self) -> None:
        """Write changes for ever."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write every pending change now, in one store call (batches of `_BATCH`).

        Streams that open or close at once (a reconnect storm, a shutdown) cost the
        store one write per batch rather than one round trip per user.
        """
        while self._dirty:
            users = list(itertools.islice(self._dirty, _BATCH))
            waiting = [self._dirty.pop(user_id) for user_id in users]
            changes = [(u, self._count(u), self.delivered.get(u)) for u in users]
            try:
                await self._store.set_presence_many(changes)
            except StoreUnavailable as exc:
                for waiters in waiting:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                if not self.closing:
                    self._spawn(self._retry(users), "ssehub-presence-retry")
                continue
            for (user_id, count, _), waiters in zip(changes, waiting, strict=True):
                if count == 0 and self._count(user_id) == 0:
                    self.delivered.pop(user_id, None)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _retry(self, user_ids: list[str]) -> None:
        await asyncio.sleep(_RETRY_SECONDS)
        for user_id in user_ids:
            self.mark(user_id)
