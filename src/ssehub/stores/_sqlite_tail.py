"""The SQLite store's per-user log: a table kept a little behind, and the rest in memory.

Reads by user (replay, counts, trimming) need each user's event ids in order. An index
on ``events (user_id, id)`` gave them, but every message lands at the end of its own
user's part of that index, so a transaction of messages to many users dirtied about one
index page per message, each written to the WAL and copied again by the checkpoint:
two thirds of the store's CPU per unicast message. So the table ``user_events`` holds
``(user_id, id)`` only for events up to an id (``meta.user_events_upto``), and the writer
folds the newer ones in about once a second: one page per user per fold instead of
one per message. Broadcasts (one row for many users) go in at once. A fold is cut into
slices of a few users each (`ssehub.stores._sqlite_folds`); the mark moves with the last
one, and until it does readers ignore rows of ``user_events`` after the mark.

The ids of the events not folded yet (the tail) are kept in memory by user (`Tail`),
and every read by user adds them to what the table gives (`UserLog`). A reader reads
``user_events_upto`` in its own snapshot and takes the ids after it from memory; a
snapshot may predate the last folds, so the ids of the last `KEPT_FOLDS` folds stay in
memory too, and an older snapshot scans the table for them instead (correct, only
slower). Ids in memory are candidates: rows are looked up in the reader's snapshot,
so ids committed after it, rolled back or trimmed are not seen.

Retention drops a user's oldest events by raising their floor (`ssehub.stores._sqlite_trim`),
in memory first and in ``trimmed`` with the next fold; every read skips the user's ids up
to the floor, so rows still in the file until that fold are never seen.
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import threading
from collections import deque
from typing import Any

from ssehub.stores._sqlite_sql import BROADCAST, MAX_ID

KEPT_FOLDS = 2  # folded spans kept in memory for readers whose snapshot predates them

UPTO = "SELECT value FROM meta WHERE name = 'user_events_upto'"

_TAIL_ROWS = (
    "SELECT id, {column} FROM events WHERE id IN (SELECT value FROM json_each(?1)) "
    "AND user_id = ?2 ORDER BY id"
)
_SCAN_TAIL = "SELECT id FROM events WHERE id > ?1 AND user_id = ?2 ORDER BY id"


class Span:
    """What the writer did after the id ``after``, up to the fold that closed it: ids of
    the events it inserted, by user, and what retention dropped (`_sqlite_trim`)."""

    __slots__ = ("after", "dropped", "floors", "ids")

    def __init__(self, after: int) -> None:
        self.after = after
        self.ids: dict[str, list[int]] = {}
        self.floors: dict[str, int] = {}  # users' newest id dropped, rows still in the file
        self.dropped: list[int] = []  # ids of those rows


class Tail:
    """What the file does not say yet: ids of the events not folded into ``user_events``
    by user, and floors retention moved that ``trimmed`` does not hold yet.

    The writer thread adds ids as it inserts rows (`add`) and floors after each commit
    (`trimmed`), cuts the span a fold takes (`cut`) and reports the fold committed
    (`folded`); reader threads take a user's ids (`ids`) and floor (`floor`). ``upto``
    is the newest fold the writer committed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.upto = 0
        self._spans: deque[Span] = deque([Span(0)])  # oldest first; the last one is open
        self.size = 0  # ids and dropped rows in the open span: work for the next fold

    def start(self, upto: int) -> None:
        """On opening the file: every event up to ``upto`` is folded, none in memory."""
        with self._lock:
            self.upto = upto
            self._spans = deque([Span(upto)])
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

    def trimmed(self, floors: dict[str, int], dropped: list[int]) -> None:
        """The writer committed these users' new floors, dropping the rows ``dropped``."""
        with self._lock:
            span = self._spans[-1]
            span.floors.update(floors)  # a floor only rises
            span.dropped += dropped
            self.size += len(dropped)  # work for the next fold

    def cut(self, upto: int) -> Span:
        """A fold of every event up to ``upto`` (the newest) starts: return the open
        span, and keep what comes next apart."""
        with self._lock:
            closed = self._spans[-1]
            self._spans.append(Span(upto))
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

    def floor(self, user_id: str) -> int:
        """The newest floor of ``user_id`` in memory, 0 if none."""
        with self._lock:
            for span in reversed(self._spans):
                found = span.floors.get(user_id)
                if found is not None:
                    return found
            return 0

    def floors(self) -> tuple[dict[str, int], list[int]]:
        """Every floor in memory, and the ids of every row dropped below them."""
        with self._lock:
            floors: dict[str, int] = {}
            dropped: list[int] = []
            for span in self._spans:  # oldest first: newer floors replace older ones
                floors.update(span.floors)
                dropped += span.dropped
            return floors, dropped


class UserLog:
    """Users' events as one snapshot (one read transaction, or the writer's) sees them:
    the rows of ``user_events`` and, after them, the tail's, above the user's floor.

    Args:
        cur: a cursor inside the transaction.
        tail: what memory holds.
        upto: the fold this transaction sees (default: read it from the file).
    """

    def __init__(self, cur: sqlite3.Cursor, tail: Tail, upto: int | None = None) -> None:
        self.cur = cur
        self._tail = tail
        self.upto: int = cur.execute(UPTO).fetchone()[0] if upto is None else upto
        self._cached: tuple[str, list[int]] | None = None  # (user, their tail ids)
        self._floors: dict[str, int] = {}

    def floor(self, user_id: str) -> int:
        """The newest id of the user's that retention dropped, 0 if none: in ``trimmed``
        or, newer, in memory. Memory may hold a floor newer than this snapshot (moved by
        an event it does not see): hiding what is being dropped anyway loses nothing."""
        found = self._floors.get(user_id)
        if found is None:
            found = self._floors[user_id] = max(self._written(user_id), self._tail.floor(user_id))
        return found

    def floor_in_memory(self, user_id: str) -> bool:
        """The user's floor is newer than ``trimmed`` says in this snapshot."""
        memory = self._tail.floor(user_id)
        return memory > 0 and memory > self._written(user_id)

    def _written(self, user_id: str) -> int:
        found = self.cur.execute("SELECT dropped_id FROM trimmed WHERE user_id = ?", (user_id,))
        row = found.fetchone()
        return int(row[0]) if row else 0

    def _folded(self, user_id: str) -> int:
        """The newest id of ``user_events`` this snapshot reads for ``user_id`` (rows after
        the mark, from a fold under way, are in memory too)."""
        return MAX_ID if user_id == BROADCAST else self.upto

    def _tail_ids(self, user_id: str) -> list[int]:
        """The candidate ids of ``user_id`` after the fold, in order (memory's, or the
        table's when this snapshot is older than what memory holds)."""
        if self._cached is not None and self._cached[0] == user_id:
            return self._cached[1]
        if user_id == BROADCAST:
            return []  # broadcasts are in the table from the start
        ids = self._tail.ids(user_id, self.upto)
        if ids is None:  # this snapshot is older than what memory holds
            ids = [row[0] for row in self.cur.execute(_SCAN_TAIL, (self.upto, user_id))]
        if ids:
            self._cached = (user_id, ids)
        return ids

    def _look_up(self, ids: list[int], user_id: str, column: str) -> list[tuple[Any, ...]]:
        """``(id, column)`` of the rows of ``ids`` (candidates, in order) this snapshot
        holds for the user."""
        sql = _TAIL_ROWS.format(column=column)
        return self.cur.execute(sql, (json.dumps(ids), user_id)).fetchall()

    def tail_rows(
        self, user_id: str, after: int, column: str, limit: int | None = None
    ) -> list[tuple[Any, ...]]:
        """``(id, column)`` of the user's kept events in the tail after ``after``, in
        order; the first ``limit`` of them if given.

        Only the candidates after ``after`` are looked up, ``limit`` at a time: a log
        whose tail holds thousands of ids (the presence log in a connect storm) is not
        read whole to drop its oldest few.
        """
        ids = self._tail_ids(user_id)
        start = bisect.bisect_right(ids, max(after, self.floor(user_id)))
        if limit is None:
            return self._look_up(ids[start:], user_id, column) if start < len(ids) else []
        found: list[tuple[Any, ...]] = []
        while start < len(ids) and len(found) < limit:
            wanted = limit - len(found)
            found += self._look_up(ids[start : start + wanted], user_id, column)
            start += wanted
        return found

    def _newest_in_tail(self, user_id: str) -> int:
        """The newest id of the user's kept events in the tail, 0 if none."""
        ids = self._tail_ids(user_id)
        floor = self.floor(user_id)
        end, chunk = len(ids), 16
        while end > 0 and ids[end - 1] > floor:
            start = max(bisect.bisect_right(ids, floor, 0, end), end - chunk)
            found = self._look_up(ids[start:end], user_id, "1")
            if found:
                return int(found[-1][0])
            end, chunk = start, chunk * 4
        return 0

    def rows(
        self, user_id: str, after: int, limit: int, column: str = "payload"
    ) -> list[tuple[Any, ...]]:
        """``(id, column)`` of up to ``limit`` of the user's kept events after ``after``."""
        found: list[tuple[Any, ...]] = self.cur.execute(
            f"SELECT e.id, e.{column} FROM user_events u CROSS JOIN events e ON e.id = u.id "
            "WHERE u.user_id = ? AND u.id > ? AND u.id <= ? ORDER BY u.id LIMIT ?",
            (user_id, max(after, self.floor(user_id)), self._folded(user_id), limit),
        ).fetchall()
        if len(found) < limit:
            found += self.tail_rows(user_id, after, column, limit - len(found))
        return found

    def ids(self, user_id: str, after: int, limit: int) -> list[int]:
        """Ids of up to ``limit`` of the user's kept events after ``after``, from
        ``user_events`` alone where it has them (no page of ``events`` is read)."""
        found = [
            row_id
            for (row_id,) in self.cur.execute(
                "SELECT id FROM user_events WHERE user_id = ? AND id > ? AND id <= ? "
                "ORDER BY id LIMIT ?",
                (user_id, max(after, self.floor(user_id)), self._folded(user_id), limit),
            )
        ]
        if len(found) < limit:
            found += [row[0] for row in self.tail_rows(user_id, after, "1", limit - len(found))]
        return found

    def newest(self, user_id: str) -> int:
        """The user's newest kept event id, 0 if none."""
        tail = self._newest_in_tail(user_id)
        if tail:
            return tail
        found = self.cur.execute(
            "SELECT id FROM user_events WHERE user_id = ? AND id > ? AND id <= ? "
            "ORDER BY id DESC LIMIT 1",
            (user_id, self.floor(user_id), self._folded(user_id)),
        ).fetchone()
        return int(found[0]) if found else 0

    def count(self, user_id: str, after: int = 0) -> int:
        """How many kept events of the user have an id after ``after``."""
        return self.count_folded(user_id, after) + self.count_tail(user_id, after)

    def count_folded(self, user_id: str, after: int = 0) -> int:
        """`count` in the table only."""
        found = self.cur.execute(
            "SELECT count(*) FROM user_events WHERE user_id = ? AND id > ? AND id <= ?",
            (user_id, max(after, self.floor(user_id)), self._folded(user_id)),
        )
        count: int = found.fetchone()[0]
        return count

    def count_tail(self, user_id: str, after: int = 0) -> int:
        """`count` in the tail only."""
        return len(self.tail_rows(user_id, after, "1"))
