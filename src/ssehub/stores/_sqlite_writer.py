"""The SQLite store's writer: one thread, one connection, one transaction per batch.

Jobs are queued from the event loop. The thread takes the first job and everything else
waiting, runs them in one transaction, commits, and then hands the results back to the
loop with ``call_soon_threadsafe``: new events go to ``deliver`` (in id order) before the
futures resolve. Retention runs here too, so the loop never waits for the disk.
Checkpoints of the WAL run on a thread of their own (`Checkpointer`). About once a
second a transaction also folds the newest events into ``user_events`` and writes what
retention dropped (`_sqlite_folds`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssehub.events import StoredEvent
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores._sqlite_checkpoint import Checkpointer
from ssehub.stores._sqlite_folds import Folds, fold_by_range, write_floors
from ssehub.stores._sqlite_sessions import Sessions
from ssehub.stores._sqlite_sql import BROADCAST, SCHEMA, SCHEMA_VERSION
from ssehub.stores._sqlite_tail import UPTO, Tail, UserLog
from ssehub.stores._sqlite_trim import Trimmer
from ssehub.stores.base import Retention

logger = logging.getLogger("ssehub.stores.sqlite")

MAX_BATCH_EVENTS = 10_000  # events written in one transaction
# How long a lazy job (presence) may wait for company: a transaction of a few rows costs
# about 60 µs of CPU, mostly its commit; in a burst of streams opening, rows per commit
# decide the writer's cost per stream.
LAZY_SECONDS = 0.002
MAX_QUEUED_EVENTS = 100_000  # beyond this, submitting fails fast with StoreUnavailable
SWEEP_CHUNK = 10_000  # rows one sweep transaction deletes at most
_PAUSE_SECONDS = 0.001  # how often a paused writer looks again
_STOP = object()
_USERS_AFTER = "SELECT DISTINCT user_id FROM events WHERE id > ? AND user_id != ?"

Appended = list[tuple[str, StoredEvent]]


class _Job:
    """Work for the writer thread; its result resolves ``future`` on the loop."""

    __slots__ = ("due", "fn", "future", "notify", "size")

    def __init__(
        self,
        fn: Callable[[sqlite3.Cursor], Any],
        future: asyncio.Future[Any],
        *,
        size: int,
        notify: bool,
        due: float,
    ) -> None:
        self.fn = fn
        self.future = future
        self.size = size
        self.notify = notify  # the result is an ``Appended`` for ``deliver``
        self.due = due  # the monotonic time by which its transaction starts


class Writer:
    """Owns the writing connection of one SQLite file and the thread that uses it.

    Args:
        path: the database file.
        synchronous: SQLite's ``PRAGMA synchronous``: full, normal or off.
        retention: how much history to keep per user.
        deliver: called on the loop with each committed append's events, in id order.
        index_interval: seconds between folds of the newest events into ``user_events``.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        retention: Retention,
        deliver: Callable[[Appended], None],
        index_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.retention = retention
        self.deliver = deliver
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._queued = 0  # events submitted and not yet resolved (touched on the loop only)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_created = 0.0
        self.sessions = Sessions()  # thread state: touch only in jobs
        self.tail = Tail()  # written by the thread, read by the readers too
        self._folds = Folds(self.tail, index_interval)  # thread state
        self._trimmer = Trimmer(self.tail, retention)  # thread state
        self._checkpointer = Checkpointer(path, synchronous=synchronous)

    @property
    def running(self) -> bool:
        """The thread is up and takes jobs."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Open the file (schema, WAL) on a new thread; raise what opening raised."""
        self._loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="ssehub-sqlite-writer", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise

    async def stop(self) -> None:
        """Write and resolve every job already submitted, then end the thread."""
        if self._thread is not None:
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def submit(
        self,
        fn: Callable[[sqlite3.Cursor], Any],
        *,
        size: int = 1,
        notify: bool = False,
        lazy: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue ``fn`` to run in the next transaction; the future gets its result.

        A ``lazy`` job may wait `LAZY_SECONDS` for others to share its transaction (a
        commit costs more than a few rows); any other job starts the transaction at once.

        Raises:
            StoreUnavailable: the writer is not running, or too far behind.
        """
        if self._loop is None or not self.running:
            raise StoreUnavailable("the SQLite store is not running")
        if self._queued + size > MAX_QUEUED_EVENTS:
            raise StoreUnavailable(f"the SQLite writer is {self._queued} events behind")
        future = self._loop.create_future()
        self._queued += size
        due = time.monotonic() + LAZY_SECONDS if lazy else 0.0
        self._jobs.put(_Job(fn, future, size=size, notify=notify, due=due))
        return future

    def append(
        self, items: list[tuple[str, bytes]], *, lazy: bool = False
    ) -> asyncio.Future[list[StoredEvent]]:
        """Queue an append of ``(user_id, payload)`` pairs; the future gets the events.

        ``deliver`` hears of them first. See `submit`.
        """
        return self.submit(
            lambda cur: self._insert(cur, items), size=len(items), notify=True, lazy=lazy
        )

    def broadcast(self, user_ids: list[str], payload: bytes) -> asyncio.Future[list[StoredEvent]]:
        """Queue a broadcast to these users; the future gets an event per user.

        The payload is written once; users with an open session (see `Sessions`) all
        get the same event, a user without one a row of their own. ``deliver`` hears
        of every user's event first.
        """
        return self.submit(lambda cur: self._broadcast(cur, user_ids, payload), notify=True)

    # -- the thread ----------------------------------------------------------------------

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._open()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        cur = conn.cursor()
        self._checkpointer.start()
        self_checkpointing = False
        try:
            stopping = False
            while not stopping:
                batch: list[_Job] = []  # none: idle, with events to fold
                size = 0
                with contextlib.suppress(queue.Empty):
                    first = self._jobs.get(timeout=self._folds.wait())
                    if first is _STOP:
                        break
                    assert isinstance(first, _Job)
                    batch, size = [first], first.size
                due = batch[0].due if batch else 0.0  # when this transaction must start
                while batch and size < MAX_BATCH_EVENTS:
                    try:
                        wait = due - time.monotonic()  # > 0: lazy jobs only, so far
                        more = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    assert isinstance(more, _Job)
                    batch.append(more)
                    size += more.size
                    due = min(due, more.due)
                while self._checkpointer.paused:  # the WAL is being made to start over
                    time.sleep(_PAUSE_SECONDS)
                self._write(cur, batch)
                self._checkpointer.committed()
                if self._checkpointer.failed and not self_checkpointing:
                    # Nobody else checkpoints: SQLite's own way, in the commits, again.
                    with contextlib.suppress(sqlite3.Error):
                        cur.execute("PRAGMA wal_autocheckpoint=1000")
                    self_checkpointing = True
            self._flush(cur)
        finally:
            self._checkpointer.stop()
            conn.close()  # the last connection to close checkpoints what is left

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
                conn.execute("PRAGMA journal_size_limit=67108864")
                # Folds write to every active user's pages of ``user_events``, last
                # touched a second before: 32 MB keeps them cached (a slice of 64 users
                # took 2.7-3.4 ms of CPU with the default 2 MB, 1.1 ms with this).
                conn.execute("PRAGMA cache_size=-32768")
                conn.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's work
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"{self.path} was written by a newer ssehub (schema {version})"
                    )
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                # One process owns the file: streams recorded as open died with it.
                conn.execute("UPDATE users SET connections = 0 WHERE connections > 0")
                self.sessions.load(conn.cursor())
                newest = conn.execute("SELECT created FROM events ORDER BY id DESC LIMIT 1")
                row = newest.fetchone()
                self._last_created = row[0] if row else 0.0
                self._fold_at_open(conn.cursor())
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite file {self.path}: {exc}") from exc
        return conn

    def _fold_at_open(self, cur: sqlite3.Cursor) -> None:
        # Events the last process wrote after its last fold (it may have been killed),
        # or every event of a file from before ``user_events``, whose index goes.
        # Users with such events may have had floors in memory only: trim them again.
        cur.execute("BEGIN IMMEDIATE")
        try:
            (upto,) = cur.execute(UPTO).fetchone()
            found = cur.execute(_USERS_AFTER, (upto, BROADCAST)).fetchall()
            fold_by_range(cur, upto, self.sessions.last_id)
            self.tail.start(self.sessions.last_id)  # (nobody reads before the commit)
            now = time.time()
            for (user_id,) in found:
                self._trimmer.trim(cur, user_id, 0, now)
            self._trimmer.write(cur)
            cur.execute("DROP INDEX IF EXISTS events_by_user")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _flush(self, cur: sqlite3.Cursor) -> None:
        # Stopping: fold the tail and write what retention dropped now, so the next
        # opening has nothing to fold or trim again.
        try:
            cur.execute("BEGIN IMMEDIATE")
            self._folds.fold_all(cur, self.sessions.last_id)
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            logger.warning("SQLite: dropped events stay in the file until read: %s", exc)

    def _write(self, cur: sqlite3.Cursor, batch: list[_Job]) -> None:
        # The jobs' transaction, handed back to the loop at once; then a fold's slice,
        # if one is due, in a transaction of its own: a slice (up to 1.5 ms of CPU)
        # would otherwise delay the delivery of every message committed with it.
        # Jobs already waiting go first, unless the fold is so far behind that it must
        # not wait (`Folds.pressing`): after a burst, a fold's slices come back to back,
        # and each append would otherwise wait for one.
        if batch:
            self._transaction(cur, batch)
        if self._folds.due() and (self._jobs.empty() or self._folds.pressing):
            self._transaction(cur, [])

    def _transaction(self, cur: sqlite3.Cursor, batch: list[_Job]) -> None:
        """Run ``batch``'s jobs in one transaction, or a fold's step if there are none."""
        results: list[Any] = []
        try:
            cur.execute("BEGIN IMMEDIATE")
            if self.sessions.dirty:
                self.sessions.recover(cur)
            for job in batch:
                results.append(job.fn(cur))
            if not batch:
                self._folds.step(cur, self.sessions.last_id)
            cur.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            self._trimmer.rolled_back()
            self._folds.rolled_back()
            self.sessions.dirty = True  # and sessions may have changed in memory only
            if isinstance(exc, sqlite3.Error):
                logger.error("SQLite write failed: %s", exc)
                exc = StoreUnavailable(f"SQLite write failed: {exc}")
            self._call_on_loop(self._fail, batch, exc)
            return
        self._folds.committed()
        self._trimmer.committed()  # after: a fold by range starts memory again
        if batch:
            self._call_on_loop(self._finish, batch, results)

    def _call_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    # -- back on the loop -------------------------------------------------------------------

    def _finish(self, batch: list[_Job], results: list[Any]) -> None:
        for job, result in zip(batch, results, strict=True):
            self._queued -= job.size
            if job.notify:
                try:
                    self.deliver(result)
                except Exception:
                    logger.exception("the store listener failed")
                result = [event for _, event in result]
            if not job.future.done():
                job.future.set_result(result)

    def _fail(self, batch: list[_Job], exc: Exception) -> None:
        for job in batch:
            self._queued -= job.size
            if not job.future.done():
                job.future.set_exception(exc)

    # -- jobs (on the thread, inside the batch's transaction) ----------------------------------

    def _insert(self, cur: sqlite3.Cursor, items: list[tuple[str, bytes]]) -> Appended:
        # ``created`` never decreases in id order, so expired rows are a prefix of the table.
        now = self._last_created = max(time.time(), self._last_created)
        stored: Appended = []
        added: dict[str, int] = {}
        cur.executemany(
            "INSERT INTO events (user_id, created, payload) VALUES (?, ?, ?)",
            [(user_id, now, payload) for user_id, payload in items],
        )
        # One writer, one transaction, AUTOINCREMENT: the rows got consecutive ids.
        (last,) = cur.execute("SELECT last_insert_rowid()").fetchone()
        self.sessions.last_id = last
        event_id = last - len(items)
        pairs: list[tuple[str, int]] = []
        for user_id, payload in items:
            event_id += 1
            stored.append((user_id, StoredEvent(str(event_id), payload, (event_id, 0))))
            pairs.append((user_id, event_id))
            added[user_id] = added.get(user_id, 0) + 1
        self.tail.add(pairs)
        for user_id, count in added.items():
            self._trimmer.trim(cur, user_id, count, now)
        return stored

    def _broadcast(self, cur: sqlite3.Cursor, user_ids: list[str], payload: bytes) -> Appended:
        now = self._last_created = max(time.time(), self._last_created)
        cur.execute(
            "INSERT INTO events (user_id, created, payload) VALUES (?, ?, ?)",
            (BROADCAST, now, payload),
        )
        event_id = self.sessions.last_id = cur.lastrowid or 0
        cur.execute("INSERT INTO user_events (user_id, id) VALUES (?, ?)", (BROADCAST, event_id))
        covered, alone = self.sessions.broadcast(cur, event_id, user_ids)
        self._trimmer.trim(cur, BROADCAST, 1, now)
        event = StoredEvent(str(event_id), payload, (event_id, 0))
        appended = [(user_id, event) for user_id in covered]
        if alone:  # not watched (yet, or any more): a row each, as before
            appended += self._insert(cur, [(user_id, payload) for user_id in alone])
        return appended

    def sweep_chunk(self, cur: sqlite3.Cursor) -> int:
        """Delete up to `SWEEP_CHUNK` expired events; return how many (a job)."""
        cutoff = time.time() - self.retention.max_age
        newest: dict[str, int] = {}
        boundary = None
        rows = cur.connection.execute(
            "SELECT id, user_id, created FROM events ORDER BY id LIMIT ?", (SWEEP_CHUNK,)
        )
        dropped = 0
        for row_id, user_id, created in rows:
            if created >= cutoff:
                break
            newest[user_id] = boundary = row_id
            dropped += 1
        rows.close()
        if boundary is not None:
            cur.execute("DELETE FROM events WHERE id <= ?", (boundary,))
            write_floors(cur, list(newest.items()))
            for user_id in newest:
                self._trimmer.forget(user_id)
            # Forget users nobody knows who have nothing kept any more, as MemoryStore does
            # (the mark of broadcasts is kept: sessions need it).
            newest.pop(BROADCAST, None)
            log = UserLog(cur, self.tail, self.tail.upto)
            cur.executemany(
                "DELETE FROM trimmed WHERE user_id = ?1 "
                "AND NOT EXISTS (SELECT 1 FROM users WHERE user_id = ?1) "
                "AND NOT EXISTS (SELECT 1 FROM user_events WHERE user_id = ?1)",
                [(user_id,) for user_id in newest if not log.count_tail(user_id)],
            )
        return dropped
