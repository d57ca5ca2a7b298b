"""Checkpoints of the SQLite store's WAL, on a thread of their own.

A checkpoint copies what the WAL holds into the database file and, unless
``synchronous=off``, flushes both to disk. SQLite's default runs one inside the commit
that fills the WAL past 1,000 pages (4 MB), and a commit of messages to many users
dirtied a page of the user index per user (before ``user_events``): under load that was
a checkpoint every few commits, most of the writer's time, and every append waited for
it (the tail of the steady figure). The writer turns automatic checkpoints off; this
thread runs a passive checkpoint (which blocks neither the writer nor the readers, and
copies each page once however often it changed) at most every `INTERVAL` seconds while
commits come in. Under a load that never stops a passive checkpoint never catches up, and the
WAL only starts over once every frame is copied: past `RESTART_PAGES` the thread asks
the writer to hold off (`paused`) and runs a ``RESTART`` checkpoint of what the passive
one left, a few milliseconds (5-28 ms measured on a busy machine) every 64 MB of WAL.
On Linux the thread runs `NICENESS` steps nicer than the process, so that on a core
shared with the event loop and the writer those two are given the core first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
from pathlib import Path

logger = logging.getLogger("ssehub.stores.sqlite")

INTERVAL = 0.5  # seconds between checkpoints while commits come in
NICENESS = 10  # added to this thread's, on Linux: the loop and the writer go first on a busy core
RESTART_PAGES = 16_000  # WAL pages (64 MB) past which the WAL is made to start over


class Checkpointer:
    """A thread that checkpoints the WAL of ``path`` after commits.

    Args:
        path: the database file.
        synchronous: the store's ``PRAGMA synchronous`` (``off``: no flush at all).
    """

    def __init__(self, path: Path, *, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._dirty = threading.Event()
        self._stop = threading.Event()
        #: The writer should start no transaction now (read by the writer, set here).
        self.paused = False
        #: This thread could not open the file: the writer must checkpoint itself again.
        self.failed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="ssehub-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """Something was committed: checkpoint within `INTERVAL` seconds."""
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self) -> None:
        """End the thread (blocking: call from a thread; closing the file checkpoints)."""
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        _yield_the_core()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        except sqlite3.Error as exc:
            logger.error("cannot open %s to checkpoint it: %s", self.path, exc)
            self.failed = True
            return
        try:
            while True:
                self._dirty.wait()
                if self._stop.is_set():
                    return
                self._dirty.clear()
                try:
                    _, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if pages >= RESTART_PAGES:
                        self.paused = True
                        try:
                            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        finally:
                            self.paused = False
                except sqlite3.Error as exc:
                    logger.warning("WAL checkpoint failed: %s", exc)
                if self._stop.wait(INTERVAL):  # at most one checkpoint per interval
                    return
        finally:
            conn.close()


def _yield_the_core() -> None:
    # A passive checkpoint copies pages for 3-24 ms at a time; on a busy core the event
    # loop, woken meanwhile, waited for the scheduler to take the core back. On Linux a
    # thread has a niceness of its own (its id is a pid to setpriority); elsewhere the
    # call would name the process, so it is not made.
    if sys.platform == "linux":
        me = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(
                os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + NICENESS)
            )
