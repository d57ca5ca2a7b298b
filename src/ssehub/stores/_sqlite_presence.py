"""The SQLite store's presence: changes kept in memory at once, written in batches.

The hub records presence one user at a time and waits for each call; a write to the
file per call would cost a round trip to the writer thread for every stream opened or
closed. Instead `PresenceBuffer.set` returns at once: the change goes into the open
batch, which is one job of the writer (one ``executemany`` in its next transaction),
and reads look at the changes not yet committed first, so a caller sees its own writes.
Sessions (`ssehub.stores._sqlite_sessions`) open and close in the same batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time

from ssehub.exceptions import StoreUnavailable
from ssehub.stores._sqlite_writer import Writer

logger = logging.getLogger("ssehub.stores.sqlite")

_RETRY_SECONDS = 1.0

# (user_id, connections, last_seen, cursor, cursor_n): one row of the ``users`` table.
Row = tuple[str, int, float, str | None, int | None]

_UPSERT = (
    "INSERT INTO users (user_id, connections, last_seen, cursor, cursor_n) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
    "connections = excluded.connections, last_seen = excluded.last_seen, "
    "cursor = coalesce(excluded.cursor, cursor), "
    "cursor_n = coalesce(excluded.cursor_n, cursor_n)"
)


class _Batch:
    __slots__ = ("sessions", "users")

    def __init__(self) -> None:
        self.users: dict[str, Row] = {}
        self.sessions: dict[str, bool] = {}  # user -> open (True) or closed


class PresenceBuffer:
    """Presence changes not yet committed, and the batch that will write them.

    Args:
        writer: the store's writer; each batch is one of its jobs.
    """

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        # The batch the writer has not taken yet; shared with the writer thread, which
        # takes it under the lock, so a change is either in the batch taken or in the next.
        self._lock = threading.Lock()
        self._batch: _Batch | None = None
        # Loop side: per user, the newest change not yet known to be committed, and the
        # future of the job that writes it.
        self._unflushed: dict[str, tuple[Row, asyncio.Future[None]]] = {}
        self._future: asyncio.Future[None] | None = None  # the open batch's job

    def set(self, user_id: str, connections: int, cursor: str | None, cursor_n: int | None) -> None:
        """Record a change; it is written in the writer's next transaction.

        A change without a cursor keeps the cursor of an earlier one.

        Raises:
            StoreUnavailable: the writer is not running or too far behind.
        """
        entry = self._unflushed.get(user_id)
        if cursor is None and entry is not None:
            cursor, cursor_n = entry[0][3], entry[0][4]
        self._add((user_id, connections, time.time(), cursor, cursor_n))

    def session(self, user_id: str, opened: bool) -> None:
        """Open or close a user's session in the writer's next transaction.

        Raises:
            StoreUnavailable: the writer is not running or too far behind.
        """
        with self._lock:
            batch, new = self._open_batch()
            batch.sessions[user_id] = opened
        if new:
            self._submit(batch)

    def _open_batch(self) -> tuple[_Batch, bool]:
        # Under the lock: the batch the writer has not taken, and whether it is new.
        if self._batch is None:
            self._batch = _Batch()
            return self._batch, True
        return self._batch, False

    def _add(self, row: Row) -> None:
        user_id = row[0]
        with self._lock:
            batch, new = self._open_batch()
            batch.users[user_id] = row
        if new:
            self._submit(batch)
        assert self._future is not None
        self._unflushed[user_id] = (row, self._future)

    def _submit(self, batch: _Batch) -> None:
        try:
            self._future = self._writer.submit(lambda cur: self._write(cur, batch), lazy=True)
        except StoreUnavailable:
            with self._lock:
                self._batch = None
            raise
        self._future.add_done_callback(lambda done: self._written(done, batch))

    def pending(self, user_id: str) -> Row | None:
        """The newest change of a user not yet known to be committed, if any."""
        entry = self._unflushed.get(user_id)
        return entry[0] if entry is not None else None

    async def settle(self) -> None:
        """Return once every change recorded so far is committed (or failed)."""
        futures = {future for _, future in self._unflushed.values()}
        for future in futures:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(future)

    # -- writer thread -----------------------------------------------------------------

    def _write(self, cur: sqlite3.Cursor, batch: _Batch) -> None:
        with self._lock:
            if self._batch is batch:
                self._batch = None  # later changes go into the next batch
        if batch.sessions:
            self._writer.sessions.change(cur, batch.sessions)
        if batch.users:
            cur.executemany(_UPSERT, list(batch.users.values()))

    # -- back on the loop -----------------------------------------------------------------

    def _written(self, done: asyncio.Future[None], batch: _Batch) -> None:
        # Sessions need no retry: the writer's memory of them is what counts, and a
        # failed transaction makes it write them again (`Sessions.recover`).
        failed = done.cancelled() or done.exception() is not None
        retry: list[Row] = []
        for user_id, row in batch.users.items():
            entry = self._unflushed.get(user_id)
            if entry is None or entry[0] is not row:
                continue  # a newer change is on its way
            if failed:
                retry.append(row)  # still the newest: reads go on seeing it
            else:
                del self._unflushed[user_id]
        if retry:
            logger.warning("presence of %d users not written; retrying", len(retry))
            asyncio.get_running_loop().call_later(_RETRY_SECONDS, self._retry, retry)

    def _retry(self, rows: list[Row]) -> None:
        for row in rows:
            entry = self._unflushed.get(row[0])
            if entry is None or entry[0] is not row:
                continue  # changed since: the newer change is written instead
            try:
                self._add(row)
            except StoreUnavailable:
                if not self._writer.running:  # closed: nothing more is written
                    del self._unflushed[row[0]]
                else:  # far behind: later
                    asyncio.get_running_loop().call_later(_RETRY_SECONDS, self._retry, [row])
