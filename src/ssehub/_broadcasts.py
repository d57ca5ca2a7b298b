"""Broadcasts: appending an accepted broadcast for this node's connected users."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from ssehub.exceptions import StoreUnavailable
from ssehub.stores.base import Store

logger = logging.getLogger("ssehub.hub")

_CHUNK = 1000  # users appended per store round trip (unless the store writes it once)
_RETRY_SECONDS = 30.0
MAX_PENDING = 1000


class Broadcasts:
    """The broadcasts this node accepted and has not yet appended, in order.

    Args:
        store: where each user's copy is appended.
        on_appended: told how many copies each store call appended.
    """

    def __init__(self, store: Store, on_appended: Callable[[int], None]) -> None:
        self._store = store
        self._on_appended = on_appended
        # Bounded by MAX_PENDING: past it, `full` is True and the hub refuses new ones.
        self._pending: collections.deque[tuple[list[str], bytes]] = collections.deque()
        self._wakeup = asyncio.Event()
        # One drainer at a time: a close that drains while the worker is appending
        # waits for it, instead of appending the same broadcast a second time.
        self._draining = asyncio.Lock()

    @property
    def full(self) -> bool:
        """Too many broadcasts wait on this node already."""
        return len(self._pending) >= MAX_PENDING

    def add(self, user_ids: list[str], payload: bytes) -> None:
        """Queue a broadcast for these users (this node's, now)."""
        if user_ids:
            self._pending.append((user_ids, payload))
            self._wakeup.set()

    async def run(self) -> None:
        """Append queued broadcasts for ever: one worker, so each user gets them in order."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self.drain()

    async def drain(self) -> None:
        """Append every queued broadcast (after any drain already under way)."""
        async with self._draining:
            await self._append_pending()

    async def _append_pending(self) -> None:
        while self._pending:
            user_ids, payload = self._pending[0]
            chunk = len(user_ids) if self._store.broadcast_once else _CHUNK
            for start in range(0, len(user_ids), chunk):
                await self._append_retrying(user_ids[start : start + chunk], payload)
                await asyncio.sleep(0)  # let publishers and new streams in between chunks
            self._pending.popleft()

    async def _append_retrying(self, user_ids: list[str], payload: bytes) -> None:
        # A broadcast was answered 202 already: a store that is busy or briefly away is
        # waited for (with back-off), not a reason to drop it.
        delay = 0.05
        deadline = time.monotonic() + _RETRY_SECONDS
        while True:
            try:
                appended = await self._store.append_to_all(user_ids, payload)
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    logger.error("broadcast lost for %d users: %s", len(user_ids), exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                self._on_appended(appended)
                return
