"""The SQLite store's readers: threads with their own connections, fed in batches.

Handing one read to a thread and its answer back to the loop costs more than most
reads (two thread switches and two GIL hand-overs, 25-50 µs of CPU against 7 µs for
the read of a user and their history, measured on one core). So, as for the writer, a
reader thread takes every read waiting, runs each in a transaction of its own, and hands
all the answers back to the loop in one ``call_soon_threadsafe``: a burst of streams
opening pays the hand-over once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssehub.exceptions import StoreUnavailable

MAX_BATCH = 256  # reads one thread takes at once
_STOP = object()

_Read = tuple[Callable[[sqlite3.Cursor], Any], asyncio.Future[Any]]
_Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


class Readers:
    """Reader threads of one SQLite file.

    Args:
        path: the database file (opened read-only by each thread, in WAL mode).
        count: threads; a long read (a big replay) holds one of them.
    """

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.count = count
        self._jobs: queue.SimpleQueue[_Read | object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        """The threads are up and take reads."""
        return bool(self._threads)

    def start(self) -> None:
        """Start the threads (each opens its connection on its first read)."""
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._run, name=f"ssehub-sqlite-reader-{n}", daemon=True)
            for n in range(self.count)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Answer every read already submitted, then end the threads."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def submit(self, fn: Callable[[sqlite3.Cursor], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in a read transaction (one snapshot) on a reader thread.

        The future gets its result, or `StoreUnavailable` if SQLite failed.
        """
        if self._loop is None or not self._threads:
            raise StoreUnavailable("the SQLite store is not running")
        future = self._loop.create_future()
        self._jobs.put((fn, future))
        return future

    # -- the threads -----------------------------------------------------------------------

    def _run(self) -> None:
        cur: sqlite3.Cursor | None = None
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        self._jobs.put(_STOP)  # for this thread, after the batch
                        break
                    batch.append(more)
                answers: list[_Answer] = []
                for job in batch:
                    assert isinstance(job, tuple)
                    fn, future = job
                    try:
                        if cur is None:
                            cur = self._open()
                        answers.append((future, self._read(cur, fn), None))
                    except StoreUnavailable as exc:
                        answers.append((future, None, exc))
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(_answer, answers)
        finally:
            if cur is not None:
                cur.connection.close()

    def _open(self) -> sqlite3.Cursor:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA query_only=1")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc
        return conn.cursor()

    @staticmethod
    def _read(cur: sqlite3.Cursor, fn: Callable[[sqlite3.Cursor], Any]) -> Any:
        try:
            cur.execute("BEGIN")  # one snapshot for every query of ``fn``
            try:
                return fn(cur)
            finally:
                cur.execute("COMMIT")
        except sqlite3.Error as exc:
            if cur.connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # leave the connection reusable
                    cur.execute("ROLLBACK")
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc


def _answer(answers: list[_Answer]) -> None:
    for future, result, exc in answers:
        if future.done():
            continue  # the reader gave up waiting
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
