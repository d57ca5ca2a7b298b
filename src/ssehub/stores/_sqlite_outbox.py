"""The SQLite store's webhook outbox: a table in the store's file.

Writes go through the store's writer thread (one transaction with whatever else is
queued), reads through its readers. One process owns the file, so a claim is held in
this process's memory: after a restart every kept delivery is free and due again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ssehub.stores.outbox import Delivery, Outbox


class SqliteOutbox(Outbox):
    """Pending deliveries in the ``webhooks`` table of a `SqliteStore`'s file.

    Args:
        submit: runs a function in the store's next write transaction.
        read: runs a function on a reader connection, in one snapshot.
    """

    def __init__(
        self,
        submit: Callable[[Callable[[sqlite3.Cursor], Any]], Awaitable[Any]],
        read: Callable[[Callable[[sqlite3.Cursor], Any]], Awaitable[Any]],
    ) -> None:
        self._submit = submit
        self._read = read
        self._held: set[str] = set()
        # Released (sent or put off) while a claim was reading: that claim's snapshot may
        # predate the release's commit, so it must not take them again.
        self._claiming = 0
        self._released: set[str] = set()

    async def put(self, delivery: Delivery) -> None:
        row = (delivery.id, delivery.body, delivery.created, delivery.attempts, time.time())
        await self._submit(
            lambda cur: cur.execute(
                "INSERT INTO webhooks (id, body, created, attempts, due) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                row,
            )
        )

    async def claim(self, limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        params = (time.time(), limit + len(self._held))  # held rows are skipped below
        self._claiming += 1
        try:
            rows: list[tuple[str, bytes, float, int]] = await self._read(
                lambda cur: cur.execute(
                    "SELECT id, body, created, attempts FROM webhooks WHERE due <= ? "
                    "ORDER BY due LIMIT ?",
                    params,
                ).fetchall()
            )
        finally:
            self._claiming -= 1
        skipped = self._held | self._released
        if not self._claiming:
            self._released = set()
        claimed: list[Delivery] = []
        for delivery_id, body, created, attempts in rows:
            if delivery_id in skipped or len(claimed) == limit:
                continue
            self._held.add(delivery_id)
            claimed.append(Delivery(delivery_id, bytes(body), created, attempts))
        return claimed

    async def retry(self, delivery: Delivery, delay: float) -> None:
        params = (delivery.attempts, time.time() + delay, delivery.id)
        try:
            await self._submit(
                lambda cur: cur.execute(
                    "UPDATE webhooks SET attempts = ?, due = ? WHERE id = ?", params
                )
            )
        finally:
            self._release(delivery.id)

    async def remove(self, delivery: Delivery) -> None:
        key = (delivery.id,)
        try:
            await self._submit(lambda cur: cur.execute("DELETE FROM webhooks WHERE id = ?", key))
        finally:
            self._release(delivery.id)

    def _release(self, delivery_id: str) -> None:
        self._held.discard(delivery_id)
        if self._claiming:
            self._released.add(delivery_id)

    async def pending(self) -> int:
        count: int = await self._read(
            lambda cur: cur.execute("SELECT count(*) FROM webhooks").fetchone()[0]
        )
        return count
