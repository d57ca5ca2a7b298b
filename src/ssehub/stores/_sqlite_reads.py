"""The SQLite store's queries that read (on a reader thread, in one transaction each).

A user's log is their own rows merged, by id, with the broadcasts inside their
sessions (see `ssehub.stores._sqlite_sessions`). Their own rows are found through
``user_events`` and the ids in memory (`UserLog`); broadcasts are all in ``user_events``.
"""

from __future__ import annotations

import heapq
import sqlite3
import time

from ssehub.events import StoredEvent
from ssehub.stores._sqlite_presence import Row
from ssehub.stores._sqlite_sql import BROADCAST, MAX_ID
from ssehub.stores._sqlite_tail import UserLog
from ssehub.stores.base import ReadResult, UserRecord


def _in_sessions(user: str, after: str, join: str = "") -> str:
    """``FROM ... WHERE`` of the broadcasts ``b`` of ``user`` after the id ``after`` (SQL
    expressions): those in a session that ends after it. CROSS JOIN keeps the user's
    few sessions the outer loop (not every kept broadcast)."""
    return (
        "FROM sessions s CROSS JOIN user_events b ON b.user_id = '' "
        f"AND b.id > max(s.from_id, {after}) AND b.id <= coalesce(s.to_id, {MAX_ID}) {join}"
        f"WHERE s.user_id = {user} AND coalesce(s.to_id, {MAX_ID}) > {after}"
    )


_BROADCASTS_AFTER = (  # user ?1, after id ?2
    f"SELECT b.id, e.payload {_in_sessions('?1', '?2', 'CROSS JOIN events e ON e.id = b.id ')}"
    "ORDER BY b.id LIMIT ?3"
)
_COUNT_BROADCASTS_AFTER = f"SELECT count(*) {_in_sessions('?1', '?2')}"

# For `list_users`: the kept events of ``u.user_id`` after its cursor, both kinds, but
# for its events after the fold mark ``:upto`` (`UserLog.count_tail` adds them) and
# floors only memory holds yet (then `count_after` counts instead).
_CURSOR = "coalesce(u.cursor_n, 0)"
_FLOOR = "coalesce((SELECT t.dropped_id FROM trimmed t WHERE t.user_id = u.user_id), 0)"
PENDING_SQL = (
    "(SELECT count(*) FROM user_events e WHERE e.user_id = u.user_id "
    f"AND e.id > max({_CURSOR}, {_FLOOR}) AND e.id <= :upto) "
    f"+ (SELECT count(*) {_in_sessions('u.user_id', _CURSOR)})"
)


def read_after(log: UserLog, user_id: str, after: tuple[int, int] | None, limit: int) -> ReadResult:
    """Up to ``limit`` events of a user after the key ``after`` (see `Store.read_after`)."""
    cur = log.cur
    sessions = cur.execute(
        f"SELECT from_id, coalesce(to_id, {MAX_ID}) FROM sessions WHERE user_id = ? "
        "ORDER BY from_id DESC",
        (user_id,),
    ).fetchall()

    def rows(after_n: int) -> list[StoredEvent]:
        found = log.rows(user_id, after_n, limit)
        if sessions:
            shared = cur.execute(_BROADCASTS_AFTER, (user_id, after_n, limit)).fetchall()
            if shared:
                found = list(heapq.merge(found, shared))[:limit]
        return [StoredEvent(str(row_id), payload, (row_id, 0)) for row_id, payload in found]

    if after is None:
        return ReadResult(rows(0))
    dropped = log.floor(user_id)
    last = max(log.newest(user_id), dropped)
    if sessions:
        shared_dropped = _broadcasts_dropped(log.floor(BROADCAST), sessions)
        dropped = max(dropped, shared_dropped)
        last = max(last, shared_dropped, _newest_broadcast(cur, sessions))
    if last == 0:
        return ReadResult([], reset=True)
    if after > (last, 0):
        return ReadResult(rows(0), reset=True)
    # Our ids are "N"; any "N-M" with M > 0 falls between N and N + 1.
    reset = dropped > 0 and after < (dropped, 0)
    return ReadResult(rows(after[0]), reset=reset)


def _newest_broadcast(cur: sqlite3.Cursor, sessions: list[tuple[int, int]]) -> int:
    """The newest kept broadcast in these sessions (newest first), 0 if none."""
    for from_id, to_id in sessions:
        found = cur.execute(
            "SELECT id FROM user_events WHERE user_id = ? AND id > ? AND id <= ? "
            "ORDER BY id DESC LIMIT 1",
            (BROADCAST, from_id, to_id),
        ).fetchone()
        if found:
            return int(found[0])
    return 0


def _broadcasts_dropped(dropped: int, sessions: list[tuple[int, int]]) -> int:
    """The newest id up to which retention may have dropped broadcasts in these sessions,
    given ``dropped``, the newest broadcast dropped (0: none).

    Exact when the newest broadcast dropped fell in one of them; otherwise the end of
    the newest session that began before it (a broadcast in it may have been dropped).
    """
    if not dropped:
        return 0
    for from_id, to_id in sessions:
        if from_id < dropped:
            return min(to_id, dropped)
    return 0


# (connections, last_seen, cursor, cursor_n): a user's row of ``users``.
Presence = tuple[int, float, str | None, int | None]


def presence_of(log: UserLog, user_id: str, change: Row | None) -> Presence | None:
    """A user's presence in the file, with ``change`` (not committed yet) on top."""
    row: Presence | None = log.cur.execute(
        "SELECT connections, last_seen, cursor, cursor_n FROM users WHERE user_id = ?",
        (user_id,),
    ).fetchone()
    if change is not None:  # set, not committed yet: newer than the row
        _, connections, last_seen, cursor, cursor_n = change
        if cursor is None and row is not None:
            cursor, cursor_n = row[2], row[3]
        row = (connections, last_seen, cursor, cursor_n)
    return row


def user_record(
    log: UserLog, user_id: str, presence: Presence | None, pending: int | None = None
) -> UserRecord:
    """A user's record from their presence; ``pending``, if known, is how many kept events
    follow their cursor (otherwise they are counted)."""
    if presence is None:
        count = count_after(log, user_id) if pending is None else pending
        return UserRecord(user_id, False, 0, None, None, count)
    connections, last_seen, cursor, cursor_n = presence
    if connections > 0:
        return UserRecord(user_id, True, connections, time.time(), cursor, 0)
    count = count_after(log, user_id, cursor_n or 0) if pending is None else pending
    return UserRecord(user_id, True, 0, last_seen, cursor, count)


def count_after(log: UserLog, user_id: str, after: int = 0) -> int:
    """How many kept events of a user have an id after ``after``, both kinds."""
    shared: int = log.cur.execute(_COUNT_BROADCASTS_AFTER, (user_id, after)).fetchone()[0]
    return log.count(user_id, after) + shared
