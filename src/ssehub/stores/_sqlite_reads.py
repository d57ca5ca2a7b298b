"""The SQLite store's queries that read (on a reader thread, in one transaction each)."""

from __future__ import annotations

import sqlite3
import time

from ssehub.events import StoredEvent
from ssehub.stores._sqlite_presence import Row
from ssehub.stores.base import ReadResult, UserRecord


def read_after(
    cur: sqlite3.Cursor, user_id: str, after: tuple[int, int] | None, limit: int
) -> ReadResult:
    """Up to ``limit`` events of a user after the key ``after`` (see `Store.read_after`)."""

    def rows(after_n: int) -> list[StoredEvent]:
        found = cur.execute(
            "SELECT id, payload FROM events WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
            (user_id, after_n, limit),
        )
        return [StoredEvent(str(row_id), payload, (row_id, 0)) for row_id, payload in found]

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


def user_record(cur: sqlite3.Cursor, user_id: str, change: Row | None) -> UserRecord:
    """What the file knows of a user, with ``change`` (presence not yet committed) on top."""
    row = cur.execute(
        "SELECT connections, last_seen, cursor, cursor_n FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if change is not None:  # set, not committed yet: newer than the row
        _, connections, last_seen, cursor, cursor_n = change
        if cursor is None and row is not None:
            cursor, cursor_n = row[2], row[3]
        row = (connections, last_seen, cursor, cursor_n)
    if row is None:
        return UserRecord(user_id, False, 0, None, None, count_after(cur, user_id))
    connections, last_seen, cursor, cursor_n = row
    if connections > 0:
        return UserRecord(user_id, True, connections, time.time(), cursor, 0)
    return UserRecord(user_id, True, 0, last_seen, cursor, count_after(cur, user_id, cursor_n or 0))


def count_after(cur: sqlite3.Cursor, user_id: str, after: int = 0) -> int:
    """How many kept events of a user have an id after ``after``."""
    found = cur.execute(
        "SELECT count(*) FROM events WHERE user_id = ? AND id > ?", (user_id, after)
    )
    count: int = found.fetchone()[0]
    return count
