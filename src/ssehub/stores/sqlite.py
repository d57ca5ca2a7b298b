"""A durable store in one SQLite file, for one process: the default of ``ssehub serve``.

One writer thread owns the only writing connection: appends and presence changes are
queued, and everything waiting is written in one transaction, so a burst of messages
costs one commit (and, with ``synchronous=full``, one fsync). Reads run on a small
pool of reader threads with their own connections; WAL mode lets them read while the
writer writes. The event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ssehub._tasks import cancel_and_wait
from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores._local import LocalFanout
from ssehub.stores._presence import PRESENCE_LOG
from ssehub.stores._sqlite_outbox import SqliteOutbox
from ssehub.stores._sqlite_presence import PresenceBuffer
from ssehub.stores._sqlite_readers import ReadCursor, Readers
from ssehub.stores._sqlite_reads import (
    PENDING_SQL,
    count_after,
    presence_of,
    read_after,
    user_record,
)
from ssehub.stores._sqlite_sessions import Sessions
from ssehub.stores._sqlite_sql import MAX_ID, lock_file
from ssehub.stores._sqlite_tail import UserLog
from ssehub.stores._sqlite_writer import SWEEP_CHUNK, Writer
from ssehub.stores.base import ReadResult, Retention, UserRecord, UserState

logger = logging.getLogger("ssehub.stores.sqlite")

T = TypeVar("T")

SYNCHRONOUS = ("full", "normal", "off")
_PREFETCH_LIMIT = 1000  # events read with the cursor of a user whose stream opens
_WANTED, _READING, _STALE = object(), object(), object()


@dataclasses.dataclass(frozen=True, slots=True)
class _Prefetched:
    after: str | None
    result: ReadResult


class SqliteStore(LocalFanout):
    """Keeps every user's log and presence in one SQLite file (WAL mode).

    Ids are the table's ``INTEGER PRIMARY KEY AUTOINCREMENT`` as decimal strings:
    increasing per user (in fact across all users), never reused, kept across
    restarts. Retention by count runs in the writer thread on every append; retention
    by age also runs there, on append and in a sweep every ``sweep_interval`` seconds.

    Args:
        path: the database file; its folder is created on `start`.
        retention: how much history to keep per user.
        synchronous: ``full`` (fsync every commit: survives power loss), ``normal``
            (survives a crash or ``kill -9`` of the process, not of the machine) or
            ``off`` (no fsync at all).
        sweep_interval: seconds between background sweeps of expired events.
        readers: threads (each with its own connection) that serve reads.
        index_interval: seconds between folds of the newest events into the per-user
            table (`ssehub.stores._sqlite_tail`); until then reads find them in memory.
    """

    shared = False
    broadcast_once = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: Retention | None = None,
        synchronous: str = "normal",
        sweep_interval: float = 60.0,
        readers: int = 2,
        index_interval: float = 1.0,
    ) -> None:
        super().__init__(retention=retention)
        if synchronous not in SYNCHRONOUS:
            raise ConfigurationError("synchronous must be full, normal or off")
        if sweep_interval <= 0 or readers < 1 or index_interval <= 0:
            raise ConfigurationError("sweep_interval, readers and index_interval must be positive")
        self.path = Path(path)
        self.synchronous = synchronous
        self.sweep_interval = sweep_interval
        self.index_interval = index_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = Writer(
            self.path,
            synchronous=synchronous,
            retention=self.retention,
            deliver=self._deliver,
            index_interval=index_interval,
        )
        self._presence = PresenceBuffer(self._writer)
        # Per user whose first stream is opening: the history read with the cursor.
        self._prefetch: dict[str, _Prefetched | object] = {}
        self._readers = Readers(self.path, readers)
        self._lock_fd: int | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, retention: Retention | None = None) -> SqliteStore:
        """Build a store from ``sqlite:///relative/path.db`` or ``sqlite:////absolute.db``.

        The query may set ``synchronous=full|normal|off`` (default normal).

        Raises:
            ConfigurationError: the URL is not a usable SQLite file URL.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "sqlite" or parts.netloc or parts.fragment:
            raise ConfigurationError(
                f"bad SQLite URL {url!r}: write sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        path = unquote(parts.path)[1:]
        if not path or path.endswith("/") or path == ":memory:":
            raise ConfigurationError(
                f"bad SQLite URL {url!r}: name a database file (for no file, use memory://)"
            )
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise ConfigurationError(f"bad SQLite URL query in {url!r}") from exc
        unknown = sorted(set(query) - {"synchronous"})
        if unknown:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(unknown)}")
        synchronous = query.get("synchronous", ["normal"])[-1].lower()
        if synchronous not in SYNCHRONOUS:
            raise ConfigurationError("synchronous must be full, normal or off")
        return cls(path, retention=retention, synchronous=synchronous)

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._lock_fd = await asyncio.to_thread(self._prepare_file)
        try:
            await self._writer.start()
        except BaseException:
            self._release_lock()
            raise
        self._readers.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ssehub-sqlite-sweep")
        logger.info("SQLite store %s open (synchronous=%s)", self.path, self.synchronous)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._sweeper)
        self._sweeper = None
        await self._writer.stop()  # what was submitted is still written and resolved
        await self._readers.stop()
        self._release_lock()

    def _prepare_file(self) -> int | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return lock_file(Path(f"{self.path}.lock"))
        except BlockingIOError as exc:
            raise ConfigurationError(
                f"{self.path} is in use by another process; a SQLite store serves one "
                "process (use redis:// for several)"
            ) from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot open SQLite file {self.path}: {exc}") from exc

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def ping(self) -> None:
        if not self._writer.running:
            raise StoreUnavailable("the SQLite store is not running")
        await self._read(lambda cur: cur.execute("SELECT 1").fetchone())

    # -- writing ----------------------------------------------------------------------

    def _submit(self, fn: Callable[[sqlite3.Cursor], Any]) -> asyncio.Future[Any]:
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        return self._writer.submit(fn)

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        if not items:
            return []
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        # The presence log's entries can wait a moment for the next stream's (`Writer.submit`).
        lazy = all(user_id == PRESENCE_LOG for user_id, _ in items)
        events: list[StoredEvent] = await self._writer.append(list(items), lazy=lazy)
        return events

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        # One row for the users with a stream open (a session), so one event and one
        # frame for all of them; a row of their own for the others.
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        events: list[StoredEvent] = await self._writer.broadcast(list(user_ids), payload)
        return len(events)

    def _deliver(self, appended: list[tuple[str, StoredEvent]]) -> None:
        prefetch = self._prefetch
        if prefetch:  # what was read before this commit may miss it: read again
            for user_id, _ in appended:
                if user_id in prefetch:
                    prefetch[user_id] = _STALE
        listener = self._listener
        if listener is not None:
            for user_id, event in appended:
                listener.on_event(user_id, event)

    def outbox(self) -> SqliteOutbox:
        """Webhook deliveries kept in this file (see `ssehub.stores.outbox.HasOutbox`)."""
        return SqliteOutbox(self._submit, self._read)

    # -- retention sweep ----------------------------------------------------------------

    async def sweep(self) -> int:
        """Drop every event older than the retention's ``max_age`` now; return how many.

        Runs on its own every ``sweep_interval`` seconds.
        """
        total = 0
        while True:
            dropped: int = await self._submit(self._writer.sweep_chunk)
            total += dropped
            if dropped < SWEEP_CHUNK:
                await self._submit(Sessions.prune)
                return total

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                logger.warning("retention sweep failed: %s", exc)

    # -- reading --------------------------------------------------------------------------

    async def _read(self, fn: Callable[[ReadCursor], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the SQLite store is not running")
        result: T = await self._readers.submit(fn)
        return result

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        after = event_key(after_id) if after_id is not None else None
        found = self._prefetch.pop(user_id, None)
        if isinstance(found, _Prefetched) and found.after == after_id:
            events = found.result.events
            if len(events) < _PREFETCH_LIMIT or limit <= len(events):
                return ReadResult(events[:limit], reset=found.result.reset)
        return await self._read(lambda cur: read_after(self._log(cur), user_id, after, limit))

    def _log(self, cur: ReadCursor) -> UserLog:
        """Users' events as the read transaction of ``cur`` sees them (the fold mark is
        looked up once per transaction)."""
        log = UserLog(cur, self._writer.tail, cur.upto)
        cur.upto = log.upto
        return log

    # -- presence ---------------------------------------------------------------------------

    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        # Returns at once: the change is committed with the writer's next transaction
        # (one executemany for every change waiting), and reads see it already.
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        cursor_n = min(event_key(cursor)[0], MAX_ID) if cursor is not None else None
        self._presence.set(user_id, connections, cursor, cursor_n)

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        # One process owns the file, so a user with open streams is seen now: reads
        # report the current time and nothing needs writing every keep-alive.
        return None

    _USER_COLUMNS = (
        "u.user_id, u.connections, u.last_seen, u.cursor, u.cursor_n, CASE WHEN "
        f"u.connections > 0 THEN 0 ELSE {PENDING_SQL} END"
    )

    @staticmethod
    def _record(row: tuple[Any, ...], log: UserLog, now: float) -> UserRecord:
        user_id, connections, last_seen, cursor, cursor_n, pending = row
        if connections > 0:
            return UserRecord(user_id, True, connections, now, cursor, 0)
        if log.floor_in_memory(user_id):  # the query counted rows dropped since
            pending = count_after(log, user_id, cursor_n or 0)
        else:
            pending += log.count_tail(user_id, cursor_n or 0)
        return UserRecord(user_id, True, 0, last_seen, cursor, pending)

    async def watch(self, user_id: str) -> None:
        # A user's first stream on this node: the hub reads the cursor next and then the
        # history after it, so the read of the cursor reads that history too (one round
        # trip to a reader instead of two for every stream opened without Last-Event-ID).
        # It also opens the user's session: broadcasts from now on are theirs.
        if self._closed:
            raise StoreUnavailable("the SQLite store is closed")
        if user_id != PRESENCE_LOG:
            self._presence.session(user_id, True)
        self._prefetch[user_id] = _WANTED

    async def unwatch(self, user_id: str) -> None:
        self._prefetch.pop(user_id, None)
        if user_id != PRESENCE_LOG and not self._closed:
            self._presence.session(user_id, False)

    async def get_user(self, user_id: str) -> UserRecord:
        change = self._presence.pending(user_id)

        def read_record(cur: ReadCursor) -> UserRecord:
            log = self._log(cur)
            return user_record(log, user_id, presence_of(log, user_id, change))

        if self._prefetch.get(user_id) is not _WANTED:
            return await self._read(read_record)
        self._prefetch[user_id] = _READING

        def read(cur: ReadCursor) -> tuple[UserRecord, ReadResult]:
            log = self._log(cur)
            presence = presence_of(log, user_id, change)
            cursor = presence[2] if presence is not None else None
            after = event_key(cursor) if cursor is not None else None
            found = read_after(log, user_id, after, _PREFETCH_LIMIT)
            # Every event after the cursor, when nothing was cut: that is the pending count.
            whole = not found.reset and len(found.events) < _PREFETCH_LIMIT
            pending = len(found.events) if whole else None
            return user_record(log, user_id, presence, pending), found

        try:
            record, result = await self._read(read)
        except BaseException:
            self._prefetch.pop(user_id, None)
            raise
        if self._prefetch.get(user_id) is _READING:  # no commit for the user meanwhile
            self._prefetch[user_id] = _Prefetched(record.cursor, result)
        else:
            self._prefetch.pop(user_id, None)
        return record

    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        if state is UserState.UNKNOWN:
            return []
        where = ["u.user_id > :after"] if after is not None else []
        if state is UserState.CONNECTED:
            where.append("u.connections > 0")
        elif state is UserState.DISCONNECTED:
            where.append("u.connections = 0")
        query = f"SELECT {self._USER_COLUMNS} FROM users u"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY u.user_id LIMIT :limit"
        await self._presence.settle()  # pages come from the table: write what waits first

        def read(cur: ReadCursor) -> list[UserRecord]:
            now, log = time.time(), self._log(cur)
            params = {"after": after, "limit": limit, "upto": log.upto}
            return [self._record(row, log, now) for row in cur.execute(query, params).fetchall()]

        return await self._read(read)
