"""The SQLite store's sessions: who had streams open when each broadcast was written.

A broadcast is one ``events`` row without a user. Who got it is kept per connection,
not per broadcast: a session is a span of ids, ``(from_id, to_id]``, during which a
user had streams open on this process, and a user's broadcasts are those inside their
sessions. The writer thread keeps the open sessions in memory (`Sessions`), changed in
its transactions in the order the loop asked for them. A session is written to the
file only when a broadcast falls in it (the first one after it opened, in that
broadcast's transaction), so streams that open and close between broadcasts write
nothing; one that a broadcast fell in gets its ``to_id`` when it closes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from ssehub.stores._sqlite_sql import BROADCAST, MAX_ID, mark_dropped

_MATERIALIZE = (
    "INSERT INTO sessions (user_id, from_id, to_id) VALUES (?, ?, NULL) "
    "ON CONFLICT (user_id, from_id) DO UPDATE SET to_id = NULL"
)
_CLOSE = "UPDATE sessions SET to_id = ? WHERE user_id = ? AND from_id = ?"


class Sessions:
    """The open sessions of one file's users (the writer thread's state).

    ``last_id`` is the newest id the file gave out; the writer moves it on every insert.
    """

    def __init__(self) -> None:
        self.last_id = 0
        self._open: dict[str, int] = {}  # user -> from_id of the open session
        self._unsaved: set[str] = set()  # open sessions not in the file yet
        self.dirty = False  # a transaction with changes was rolled back

    def load(self, cur: sqlite3.Cursor) -> None:
        """On opening the file: close every session the last process left open.

        They ended when it did (even by ``kill -9``), after the newest id it gave out.
        """
        found = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self.last_id = found[0] if found else 0
        cur.execute("UPDATE sessions SET to_id = ? WHERE to_id IS NULL", (self.last_id,))
        self.dirty = False

    def recover(self, cur: sqlite3.Cursor) -> None:
        """After a rolled-back transaction: make the file agree with memory again.

        What the rollback undid is unknown, so every session still open in the file is
        closed at the newest id, and every session open in memory starts afresh there.
        """
        self.load(cur)
        self._open = dict.fromkeys(self._open, self.last_id)
        self._unsaved = set(self._open)

    def change(self, cur: sqlite3.Cursor, changes: Mapping[str, bool]) -> None:
        """Open (True) or close (False) users' sessions, at the newest id."""
        closes: list[tuple[int, str, int]] = []
        for user_id, opened in changes.items():
            if opened:
                if user_id not in self._open:
                    self._open[user_id] = self.last_id
                    self._unsaved.add(user_id)
                continue
            from_id = self._open.pop(user_id, None)
            if from_id is None:
                continue
            if user_id in self._unsaved:
                self._unsaved.discard(user_id)  # no broadcast fell in it: nothing to write
            else:
                closes.append((self.last_id, user_id, from_id))
        if closes:
            cur.executemany(_CLOSE, closes)

    def broadcast(
        self, cur: sqlite3.Cursor, event_id: int, user_ids: Iterable[str]
    ) -> tuple[list[str], list[str]]:
        """Let broadcast ``event_id`` (just inserted) fall in these users' sessions.

        A session open for a user not listed is cut before it, so that user never gets
        it. Returns the users listed (once each) with an open session, who have it now,
        and those without one, who each need a row of their own.
        """
        wanted = dict.fromkeys(user_ids)
        for user_id in [user for user in self._open if user not in wanted]:
            if user_id not in self._unsaved:
                cur.execute(_CLOSE, (event_id - 1, user_id, self._open[user_id]))
                self._unsaved.add(user_id)
            self._open[user_id] = event_id
        if self._unsaved:
            new = [(user, self._open[user]) for user in self._unsaved if user in wanted]
            cur.executemany(_MATERIALIZE, new)
            self._unsaved.difference_update(user for user, _ in new)
        covered: list[str] = []
        alone: list[str] = []
        for user_id in wanted:
            (covered if user_id in self._open else alone).append(user_id)
        return covered, alone

    @staticmethod
    def prune(cur: sqlite3.Cursor) -> int:
        """Delete closed sessions no kept broadcast falls in; return how many.

        A dropped broadcast may have fallen in one: its user's dropped mark moves up to
        where it ended (or to the newest broadcast dropped), so a client's id older than
        that still reads as a reset.
        """
        found = cur.execute(
            "SELECT id FROM user_events WHERE user_id = ? ORDER BY id LIMIT 1", (BROADCAST,)
        ).fetchone()
        oldest = found[0] if found else MAX_ID
        mark = cur.execute("SELECT dropped_id FROM trimmed WHERE user_id = ?", (BROADCAST,))
        dropped_row = mark.fetchone()
        dropped = dropped_row[0] if dropped_row else 0
        stale = cur.execute(
            "SELECT user_id, from_id, to_id FROM sessions WHERE to_id < ?", (oldest,)
        ).fetchall()
        marks = [(user, min(to_id, dropped)) for user, from_id, to_id in stale if from_id < dropped]
        mark_dropped(cur, marks)
        cur.executemany(
            "DELETE FROM sessions WHERE user_id = ? AND from_id = ?",
            [(user, from_id) for user, from_id, _ in stale],
        )
        return len(stale)
