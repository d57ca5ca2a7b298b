"""The SQLite store's per-user log: a table kept a little behind, and the rest in memory.

Reads by user (replay, counts, trimming) need each user's event ids in order. An index
on ``events (user_id, id)`` gave them, but every message lands at the end of its own
user's part of that index, so a transaction of messages to many users dirtied about one
index page per message, each written to the WAL and copied again by the checkpoint:
two thirds of the store's CPU per unicast message. So the table ``user_events`` holds
``(user_id, id)`` only for events up to an id (``meta.user_events_upto``), and the writer
folds the newer ones in about once a second: one page per user per fold instead of
one per message. Broadcasts (one row for many users) go in at once. A fold of a
second's events to 1,000 users writes about 1,000 pages at its commit (12 ms or more),
which every publish behind it would wait for, so a fold is cut into slices of a few
users each (`Folds`), one slice in each of the writer's next transactions; the mark moves
with the last one. Until it does, readers ignore rows of ``user_events`` after the mark.

The ids of the events not folded yet (the tail) are kept in memory by user (`Tail`),
and every read by user adds them to what the table gives (`UserLog`). A reader reads
``user_events_upto`` in its own snapshot and takes the ids after it from memory; a
snapshot may predate the last folds, so the ids of the last `KEPT_FOLDS` folds stay in
memory too, and an older snapshot scans the table for them instead (correct, only
slower). Ids in memory are candidates: rows are looked up in the reader's snapshot,
so ids committed after it, rolled back or trimmed are not seen.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from ssehub.stores._sqlite_sql import BROADCAST, MAX_ID

KEPT_FOLDS = 2  # folded spans kept in memory for readers whose snapshot predates them
MAX_TAIL = 100_000  # events not folded past which a fold starts before its time
SLICE_ROWS = 2_000  # a slice of a fold: at most about this many events...
SLICE_USERS = 64  # ...or this many users (each a page of ``user_events`` to write)

# Every event after ``?1`` into the table; broadcasts are there already (OR IGNORE).
_FOLD_AFTER = (
    "INSERT OR IGNORE INTO user_events (user_id, id) "
    "SELECT user_id, id FROM events WHERE id > ?1 ORDER BY user_id, id"
)
# The events of these ids (a JSON list) that still exist into the table.
_FOLD_IDS = (
    "INSERT OR IGNORE INTO user_events (user_id, id) SELECT user_id, id FROM events "
    "WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY user_id, id"
)
UPTO = "SELECT value FROM meta WHERE name = 'user_events_upto'"
_SET_UPTO = "UPDATE meta SET value = ? WHERE name = 'user_events_upto'"

_TAIL_ROWS = (
    "SELECT id, {column} FROM events WHERE id IN (SELECT value FROM json_each(?1)) "
    "AND user_id = ?2 AND id > ?3 ORDER BY id"
)
_SCAN_TAIL = "SELECT id FROM events WHERE id > ?1 AND user_id = ?2 ORDER BY id"


def fold_by_range(cur: sqlite3.Cursor, upto: int, last_id: int) -> None:
    """Fold every event after the mark ``upto`` and move the mark to ``last_id`` (the
    newest id given out), whatever memory holds: on opening the file, after a rollback."""
    if upto < last_id:
        cur.execute(_FOLD_AFTER, (upto,))
        cur.execute(_SET_UPTO, (last_id,))


class _Span:
    """Ids of the events after ``after``, by user, up to the fold that closed it."""

    __slots__ = ("after", "ids")

    def __init__(self, after: int) -> None:
        self.after = after
        self.ids: dict[str, list[int]] = {}


class Tail:
    """Ids of the events not yet folded into ``user_events``, by user.

    The writer thread adds ids as it inserts rows (`add`), cuts the span a fold takes
    (`cut`) and reports the fold committed (`folded`); reader threads take a user's ids
    (`ids`). ``upto`` is the newest fold the writer committed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.upto = 0
        self._spans: deque[_Span] = deque([_Span(0)])  # oldest first; the last one is open
        self.size = 0  # ids in the open span

    def start(self, upto: int) -> None:
        """On opening the file: every event up to ``upto`` is folded, none in memory."""
        with self._lock:
            self.upto = upto
            self._spans = deque([_Span(upto)])
            self.size = 0

    def add(self, pairs: list[tuple[str, int]]) -> None:
        """The writer inserted these ``(user_id, id)`` rows (ids increasing)."""
        with self._lock:
            ids = self._spans[-1].ids
            for user_id, event_id in pairs:
                found = ids.get(user_id)
                if found is None:
                    ids[user_id] = [event_id]
                else:
                    found.append(event_id)
            self.size += len(pairs)

    def cut(self, upto: int) -> dict[str, list[int]]:
        """A fold of every event up to ``upto`` (the newest) starts: return their ids by
        user, and keep newer ones apart."""
        with self._lock:
            closed = self._spans[-1].ids
            self._spans.append(_Span(upto))
            self.size = 0
            return closed

    def folded(self, upto: int) -> None:
        """The fold of every event up to ``upto`` is committed."""
        with self._lock:
            self.upto = upto
            while len(self._spans) > KEPT_FOLDS + 1:
                self._spans.popleft()

    def ids(self, user_id: str, after: int) -> list[int] | None:
        """The ids in memory of ``user_id`` after ``after`` (in order), or None if memory
        no longer holds every one of them (``after`` is older than the spans kept)."""
        with self._lock:
            if self._spans[0].after > after:
                return None
            found: list[int] = []
            for span in self._spans:
                if span.after >= after:
                    found += span.ids.get(user_id, ())
                else:
                    found += [n for n in span.ids.get(user_id, ()) if n > after]
            return found


class Folds:
    """When the writer folds the tail into ``user_events``, and the slices of a fold under
    way. Every method runs on the writer thread.

    Args:
        tail: the ids in memory.
        interval: seconds between folds.
    """

    def __init__(self, tail: Tail, interval: float) -> None:
        self.tail = tail
        self.interval = interval
        self._slices: deque[list[int]] = deque()  # ids of a few users each, in user order
        self._target = 0  # the mark the fold under way moves to
        self._whole = False  # fold every event after the mark at once (after a rollback)
        self._at = time.monotonic()  # of the last fold's end
        self._stepped = False  # the transaction under way folds (a slice, or the whole)

    def wait(self) -> float | None:
        """Seconds an idle writer waits before its next slice; None: nothing to fold."""
        if self._slices:
            return 0.0
        if not self.tail.size and not self._whole:
            return None
        return max(0.0, self._at + self.interval - time.monotonic())

    def step(self, cur: sqlite3.Cursor, last_id: int) -> None:
        """Inside a transaction of the writer's, after its jobs: fold what is due.

        ``last_id`` is the newest id given out. Call `committed` after the commit, or
        `rolled_back`.
        """
        self._stepped = False
        if self._whole:  # by range, whatever memory holds
            if self.wait():
                return
            self._target = last_id
            fold_by_range(cur, self.tail.upto, last_id)
            self._stepped = True
            return
        if not self._slices:
            if not self.tail.size:
                return
            if self.tail.size < MAX_TAIL and self.wait():
                return
            self._target = last_id
            self._slices.extend(_slices(self.tail.cut(last_id)))
        self._stepped = True
        cur.execute(_FOLD_IDS, (json.dumps(self._slices[0]),))
        if len(self._slices) == 1:
            cur.execute(_SET_UPTO, (self._target,))

    def committed(self) -> None:
        """The transaction of the last `step` is committed."""
        if not self._stepped:
            return
        self._stepped = False
        if self._whole:
            self._whole = False
            self.tail.start(self._target)  # readers of older snapshots scan instead
        elif self._slices:
            self._slices.popleft()
            if self._slices:
                return
            self.tail.folded(self._target)
        self._at = time.monotonic()

    def rolled_back(self) -> None:
        """The transaction of the last `step` is rolled back.

        Ids it gave out may be given again, to rows memory would file after the fold's
        mark: the next transaction folds every event after the mark by range instead.
        """
        self._stepped = False
        self._slices.clear()
        self._whole = True
        self._at = time.monotonic()  # not at once: the disk may still refuse


def _slices(closed: dict[str, list[int]]) -> Iterator[list[int]]:
    """The ids of ``closed`` in lists of a few users each, in user order."""
    ids: list[int] = []
    users = 0
    for user_id in sorted(closed):
        ids += closed[user_id]
        users += 1
        if len(ids) >= SLICE_ROWS or users >= SLICE_USERS:
            yield ids
            ids, users = [], 0
    yield ids  # the last slice moves the mark, even if it is empty


class UserLog:
    """Users' events as one snapshot (one read transaction, or the writer's) sees them:
    the rows of ``user_events`` and, after them, the tail's.

    Args:
        cur: a cursor inside the transaction.
        tail: the ids in memory.
        upto: the fold this transaction sees (default: read it from the file).
    """

    def __init__(self, cur: sqlite3.Cursor, tail: Tail, upto: int | None = None) -> None:
        self.cur = cur
        self._tail = tail
        self.upto: int = cur.execute(UPTO).fetchone()[0] if upto is None else upto
        self._cached: tuple[str, str] | None = None  # (user, JSON of their tail ids)

    def _folded(self, user_id: str) -> int:
        """The newest id of ``user_events`` this snapshot reads for ``user_id`` (rows after
        the mark, from a fold under way, are in memory too)."""
        return MAX_ID if user_id == BROADCAST else self.upto

    def _tail_ids(self, user_id: str) -> str | None:
        """JSON of the candidate ids of ``user_id`` after the fold, None if there are none."""
        if self._cached is not None and self._cached[0] == user_id:
            return self._cached[1]
        if user_id == BROADCAST:
            return None  # broadcasts are in the table from the start
        ids = self._tail.ids(user_id, self.upto)
        if ids is None:  # this snapshot is older than what memory holds
            ids = [row[0] for row in self.cur.execute(_SCAN_TAIL, (self.upto, user_id))]
        found = json.dumps(ids) if ids else None
        if found is not None:
            self._cached = (user_id, found)
        return found

    def tail_rows(self, user_id: str, after: int, column: str) -> list[tuple[Any, ...]]:
        """``(id, column)`` of the user's events in the tail after ``after``, in order."""
        ids = self._tail_ids(user_id)
        if ids is None:
            return []
        sql = _TAIL_ROWS.format(column=column)
        return self.cur.execute(sql, (ids, user_id, after)).fetchall()

    def rows(
        self, user_id: str, after: int, limit: int, column: str = "payload"
    ) -> list[tuple[Any, ...]]:
        """``(id, column)`` of up to ``limit`` of the user's events after ``after``."""
        found: list[tuple[Any, ...]] = self.cur.execute(
            f"SELECT e.id, e.{column} FROM user_events u CROSS JOIN events e ON e.id = u.id "
            "WHERE u.user_id = ? AND u.id > ? AND u.id <= ? ORDER BY u.id LIMIT ?",
            (user_id, after, self._folded(user_id), limit),
        ).fetchall()
        if len(found) < limit:
            found += self.tail_rows(user_id, after, column)[: limit - len(found)]
        return found

    def newest(self, user_id: str) -> int:
        """The user's newest kept event id, 0 if none."""
        tail = self.tail_rows(user_id, 0, "1")
        if tail:
            return int(tail[-1][0])
        found = self.cur.execute(
            "SELECT id FROM user_events WHERE user_id = ? AND id <= ? ORDER BY id DESC LIMIT 1",
            (user_id, self._folded(user_id)),
        ).fetchone()
        return int(found[0]) if found else 0

    def count(self, user_id: str, after: int = 0) -> int:
        """How many kept events of the user have an id after ``after``."""
        return self.count_folded(user_id, after) + self.count_tail(user_id, after)

    def count_folded(self, user_id: str, after: int = 0) -> int:
        """`count` in the table only."""
        found = self.cur.execute(
            "SELECT count(*) FROM user_events WHERE user_id = ? AND id > ? AND id <= ?",
            (user_id, after, self._folded(user_id)),
        )
        count: int = found.fetchone()[0]
        return count

    def count_tail(self, user_id: str, after: int = 0) -> int:
        """`count` in the tail only."""
        return len(self.tail_rows(user_id, after, "1"))
