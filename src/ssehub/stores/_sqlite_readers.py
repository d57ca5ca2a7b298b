"""The SQLite store's readers: threads with their own connections, fed in batches.

Handing one read to a thread and its answer back to the loop costs more than most
reads (two thread switches and two GIL hand-overs, 25-50 µs of CPU against 7 µs for
the read of a user and their history, measured on one core). So, as for the writer, a
reader thread takes every read waiting, runs them all in one read transaction (one
snapshot, taken after the last of them was submitted), and hands all the answers back
to the loop in one ``call_soon_threadsafe``: a burst of streams opening pays the
hand-over, the transaction and the fold mark's read (`ReadCursor.upto`) once per batch.

A thread that wakes for each read (one per stream opening) costs more in switches than
the read itself. So while reads come in together (the last batch held more than one), a
reader that wakes lets the loop run for `GATHER_SECONDS` first, and the reads submitted
meanwhile join its batch. Reads one at a time (each waiting for the one before) never
wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssehub.exceptions import StoreUnavailable

MAX_BATCH = 256  # reads one thread takes at once
# Busy readers gather reads. 10,000 streams opening, CPU of the process per stream
# (medians of alternated rounds): 373 µs with a reader waking for every read (1.2
# switches per read per thread), 336 with a 1 ms gather, 275 with 3 ms (321 with 1 ms
# in those rounds); 6 ms gained nothing more.
GATHER_SECONDS = 0.003
_STOP = object()


class ReadCursor(sqlite3.Cursor):
    """A reader thread's cursor, inside the read transaction of a batch.

    Attributes:
        upto: the fold mark this transaction sees, once a read has looked it up (the
            reads of a batch share it: see `ssehub.stores._sqlite_tail.UserLog`).
    """

    upto: int | None = None


_Read = tuple[Callable[[ReadCursor], Any], asyncio.Future[Any]]
_Answer = tuple[asyncio.Future[Any], Any, Exception | None]


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
        self._gather = False  # the last batch taken held more than one read

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

    def submit(self, fn: Callable[[ReadCursor], Any]) -> asyncio.Future[Any]:
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
        cur: ReadCursor | None = None
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                if self._gather:
                    time.sleep(GATHER_SECONDS)  # (the GIL too: the loop submits more)
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
                self._gather = len(batch) > 1
                assert self._loop is not None
                answers, cur = self._read_batch(cur, batch)
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(_answer, answers)
        finally:
            if cur is not None:
                cur.connection.close()

    def _read_batch(
        self, cur: ReadCursor | None, batch: list[_Read | object]
    ) -> tuple[list[_Answer], ReadCursor | None]:
        """Run the reads of ``batch`` in one transaction; a read that fails gets its error
        and the rest go on in a new one."""
        answers: list[_Answer] = []
        begun = False
        try:
            for job in batch:
                assert isinstance(job, tuple)
                fn, future = job
                try:
                    if cur is None:
                        cur = self._open()
                    if not begun:
                        cur.execute("BEGIN")  # one snapshot for the reads that follow
                        cur.upto, begun = None, True
                    answers.append((future, fn(cur), None))
                except sqlite3.Error as exc:
                    if cur is not None:
                        begun = _end(cur, "ROLLBACK")
                    answers.append((future, None, _failed(exc)))
                except Exception as exc:  # StoreUnavailable, or a fault of the read's own
                    answers.append((future, None, exc))
        finally:
            if begun and cur is not None and _end(cur, "COMMIT"):
                cur.connection.close()  # cannot end its transaction: start over
                cur = None
        return answers, cur

    def _open(self) -> ReadCursor:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA query_only=1")
        except sqlite3.Error as exc:
            raise _failed(exc) from exc
        return conn.cursor(ReadCursor)


def _failed(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"SQLite read failed: {exc}")


def _end(cur: ReadCursor, statement: str) -> bool:
    """End the transaction with ``statement``; True if it is still open (that failed)."""
    with contextlib.suppress(sqlite3.Error):
        cur.execute(statement)
    return cur.connection.in_transaction


def _answer(answers: list[_Answer]) -> None:
    for future, result, exc in answers:
        if future.done():
            continue  # the reader gave up waiting
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
