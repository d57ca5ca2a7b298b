"""A durable store in one SQLite file, for one process: the default of ``ssehub serve``.

One writer thread owns the only writing connection: appends and presence changes are
queued, and everything waiting is written in one transaction, so a burst of messages
costs one commit (and, with ``synchronous=full``, one fsync). Reads run on a small
pool of reader threads with their own connections; WAL mode lets them read while the
writer writes. The event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores._local import LocalFanout
from ssehub.stores._sqlite_sql import lock_file
from ssehub.stores._sqlite_writer import SWEEP_CHUNK, Writer
from ssehub.stores.base import ReadResult, Retention, UserRecord, UserState

logger = logging.getLogger("ssehub.stores.sqlite")

T = TypeVar("T")

SYNCHRONOUS = ("full", "normal", "off")
_MAX_ROWID = 2**63 - 1


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
    """

    shared = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: Retention | None = None,
        synchronous: str = "normal",
        sweep_interval: float = 60.0,
        readers: int = 2,
    ) -> None:
        super().__init__(retention=retention)
        if synchronous not in SYNCHRONOUS:
            raise ConfigurationError("synchronous must be full, normal or off")
        if sweep_interval <= 0 or readers < 1:
            raise ConfigurationError("sweep_interval and readers must be positive")
        self.path = Path(path)
        self.synchronous = synchronous
        self.sweep_interval = sweep_interval
        self._reader_count = readers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = Writer(
            self.path, synchronous=synchronous, retention=self.retention, deliver=self._deliver
        )
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
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
        self._readers = concurrent.futures.ThreadPoolExecutor(
            self._reader_count, thread_name_prefix="ssehub-sqlite-reader"
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ssehub-sqlite-sweep")
        logger.info("SQLite store %s open (synchronous=%s)", self.path, self.synchronous)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._writer.stop()  # what was submitted is still written and resolved
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, wait=True)
            self._readers = None
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
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
        events: list[StoredEvent] = await self._writer.append(list(items))
        return events

    def _deliver(self, appended: list[tuple[str, StoredEvent]]) -> None:
        listener = self._listener
        if listener is not None:
            for user_id, event in appended:
                listener.on_event(user_id, event)

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
                return total

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                logger.warning("retention sweep failed: %s", exc)

    # -- reading --------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        if self._closed or self._readers is None or self._loop is None:
            raise StoreUnavailable("the SQLite store is not running")
        return await self._loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        cur: sqlite3.Cursor | None = getattr(self._reader_local, "cursor", None)
        try:
            if cur is None:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=10.0, check_same_thread=False
                )
                with self._reader_lock:
                    self._reader_conns.append(conn)
                conn.execute("PRAGMA query_only=1")
                cur = self._reader_local.cursor = conn.cursor()
            cur.execute("BEGIN")  # one snapshot for every query of ``fn``
            try:
                return fn(cur)
            finally:
                cur.execute("COMMIT")
        except sqlite3.Error as exc:
            if cur is not None and cur.connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # leave the connection reusable
                    cur.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        after = event_key(after_id) if after_id is not None else None
        return await self._read(lambda cur: self._read_after(cur, user_id, after, limit))

    @staticmethod
    def _read_after(
        cur: sqlite3.Cursor, user_id: str, after: tuple[int, int] | None, limit: int
    ) -> ReadResult:
        def rows(after_n: int) -> list[StoredEvent]:
            found = cur.execute(
                "SELECT id, payload FROM events WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
                (user_id, after_n, limit),
            )
            return [StoredEvent(str(row_id), payload) for row_id, payload in found]

        if after is None:
            return ReadResult(rows(0))
        newest = cur.execute(
            "SELECT id FROM events WHERE user_id = ? ORDER BY id DESC LIMIT 1", (user_id,)
        ).fetchone()
        mark = cur.execute("SELECT dropped_id FROM trimmed WHERE user_id = ?", (user_id,))
        dropped_row = mark.fetchone()
        dropped = dropped_row[0] if dropped_row else None
        last = max(newest[0] if newest else 0, dropped or 0)
        if last == 0:
            return ReadResult([], reset=True)
        if after > (last, 0):
            return ReadResult(rows(0), reset=True)
        # Our ids are "N"; any "N-M" with M > 0 falls between N and N + 1.
        reset = dropped is not None and after < (dropped, 0)
        return ReadResult(rows(after[0]), reset=reset)

    # -- presence ---------------------------------------------------------------------------

    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        cursor_n = min(event_key(cursor)[0], _MAX_ROWID) if cursor is not None else None
        params = (user_id, connections, time.time(), cursor, cursor_n)
        await self._submit(
            lambda cur: cur.execute(
                "INSERT INTO users (user_id, connections, last_seen, cursor, cursor_n) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
                "connections = excluded.connections, last_seen = excluded.last_seen, "
                "cursor = coalesce(excluded.cursor, cursor), "
                "cursor_n = coalesce(excluded.cursor_n, cursor_n)",
                params,
            )
        )

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        # One process owns the file, so a user with open streams is seen now: reads
        # report the current time and nothing needs writing every keep-alive.
        return None

    _USER_COLUMNS = (
        "u.user_id, u.connections, u.last_seen, u.cursor, CASE WHEN u.connections > 0 "
        "THEN 0 ELSE (SELECT count(*) FROM events e WHERE e.user_id = u.user_id "
        "AND e.id > coalesce(u.cursor_n, 0)) END"
    )

    @staticmethod
    def _record(row: tuple[Any, ...], now: float) -> UserRecord:
        user_id, connections, last_seen, cursor, pending = row
        return UserRecord(
            user_id, True, connections, now if connections > 0 else last_seen, cursor, pending
        )

    async def get_user(self, user_id: str) -> UserRecord:
        def read(cur: sqlite3.Cursor) -> UserRecord:
            query = f"SELECT {self._USER_COLUMNS} FROM users u WHERE u.user_id = ?"
            row = cur.execute(query, (user_id,)).fetchone()
            if row is not None:
                return self._record(row, time.time())
            (pending,) = cur.execute(
                "SELECT count(*) FROM events WHERE user_id = ?", (user_id,)
            ).fetchone()
            return UserRecord(user_id, False, 0, None, None, pending)

        return await self._read(read)

    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        if state is UserState.UNKNOWN:
            return []
        where = ["u.user_id > ?"] if after is not None else []
        if state is UserState.CONNECTED:
            where.append("u.connections > 0")
        elif state is UserState.DISCONNECTED:
            where.append("u.connections = 0")
        query = f"SELECT {self._USER_COLUMNS} FROM users u"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY u.user_id LIMIT ?"
        params = (*([after] if after is not None else []), limit)

        def read(cur: sqlite3.Cursor) -> list[UserRecord]:
            now = time.time()
            return [self._record(row, now) for row in cur.execute(query, params)]

        return await self._read(read)
