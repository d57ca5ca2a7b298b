"""The SQLite store's readers: threads with their own connections, fed in batches.

Handing one read to a thread and its answer back to the loop costs more than most
reads (two thread switches and two GIL hand-overs, 25-50 µs of CPU against 7 µs for
the read of a user and their history, measured on one core). So, as for the writer, a
reader thread takes every read waiting, runs them all in one read transaction (one
snapshot, taken after the last of them was submitted), and hands all the answers back
to the loop in one ``call_soon_threadsafe``: a burst of streams opening pays the
hand-over, the transaction and the fold mark's read (`ReadCursor.upto`) once per batch.

A thread that wakes for each read (one per stream opening) costs more in switches than
the read itself. So when reads come in together, as when streams open in a burst, a read
is taken after a pause: the reader that wakes for it lets the loop run for
`GATHER_SECONDS` first, and the reads submitted meanwhile join its batch. Reads come
together when one is submitted while another is still out; and, once that was seen,
while they follow each other within `COMPANY_SECONDS` (a burst's reads are often
answered before the next arrives). A pause that found no company ends the second rule
until reads overlap again: a lone read, or reads one at a time, each waiting for the
one before (a long replay's pages, a client asking about users in turn), wait once at
most, and never on a quiet hub.
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
# Reads this close together count as coming together, once reads have overlapped.
# Before, a reader gathered only after a batch of more than one: 2,200 of 10,000 streams'
# reads were taken alone, each waking a reader (0.74 switches per stream per reader);
# with this, 320 (0.32 switches): 282 against 312 µs of the process's CPU per stream
# (medians of six rounds alternated).
COMPANY_SECONDS = 0.002


class ReadCursor(sqlite3.Cursor):
    """A reader thread's cursor, inside the read transaction of a batch.

    Attributes:
        upto: the fold mark this transaction sees, once a read has looked it up (the
            reads of a batch share it: see `ssehub.stores._sqlite_tail.UserLog`).
    """

    upto: int | None = None


# (the read, its future, whether to wait for company before taking it)
_Read = tuple[Callable[[ReadCursor], Any], asyncio.Future[Any], bool]
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
        self._jobs: queue.SimpleQueue[_Read | None] = queue.SimpleQueue()  # None: stop
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = 0  # reads submitted and not answered yet (written on the loop only)
        self._last = 0.0  # when the last read was submitted (monotonic)
        # Reads overlapped, and no pause since found itself alone: reads that follow each
        # other closely are gathered too (set on the loop, cleared by a reader).
        self._busy = False

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
            self._jobs.put(None)
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def submit(self, fn: Callable[[ReadCursor], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in a read transaction (one snapshot) on a reader thread.

        The future gets its result, or `StoreUnavailable` if SQLite failed.
        """
        if self._loop is None or not self._threads:
            raise StoreUnavailable("the SQLite store is not running")
        future = self._loop.create_future()
        now = time.monotonic()
        if self._out:
            self._busy = True
        gather = self._out > 0 or (self._busy and now - self._last < COMPANY_SECONDS)
        self._jobs.put((fn, future, gather))
        self._last = now
        self._out += 1
        return future

    def _answer(self, answers: list[_Answer]) -> None:
        """Resolve the futures of a batch (on the loop)."""
        self._out -= len(answers)
        for future, result, exc in answers:
            if future.done():
                continue  # the reader gave up waiting
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    # -- the threads -----------------------------------------------------------------------

    def _run(self) -> None:
        cur: ReadCursor | None = None
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                if first[2]:  # reads are coming together: let the loop submit more
                    time.sleep(GATHER_SECONDS)  # (the GIL too)
                batch: list[_Read] = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        more = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._jobs.put(None)  # for this thread, after the batch
                        break
                    batch.append(more)
                if first[2] and len(batch) == 1 and self._out == 1:
                    self._busy = False  # the pause found no company, nor another read out
                assert self._loop is not None
                answers, cur = self._read_batch(cur, batch)
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._answer, answers)
        finally:
            if cur is not None:
                cur.connection.close()

    def _read_batch(
        self, cur: ReadCursor | None, batch: list[_Read]
    ) -> tuple[list[_Answer], ReadCursor | None]:
        """Run the reads of ``batch`` in one transaction; a read that fails gets its error
        and the rest go on in a new one."""
        answers: list[_Answer] = []
        begun = False
        try:
            for job in batch:
                fn, future, _ = job
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
