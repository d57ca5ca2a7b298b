"""The SQLite store's folds: what memory holds (`Tail`) written to the file, in slices.

About once a second the writer folds the ids of the newest events into ``user_events``,
and writes the floors retention moved meanwhile (see `ssehub.stores._sqlite_trim`): a
user's rows up to their floor leave ``user_events`` and ``trimmed`` takes the floor.
A fold of a second's events to 1,000 users writes about 1,000 pages at its commit
(12 ms or more), which every publish behind it would wait for, so a fold is cut into
slices of a few users each, each in a transaction of its own after the writer's next
transactions of appends (whose messages are delivered without waiting for it); the
mark (``meta.user_events_upto``) moves with the last one. Then the ``events`` rows of
what retention dropped go, in id order, a slice at a time: rows dropped in the same
second were mostly written in the same earlier second, so they share pages.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

from ssehub.stores._sqlite_sql import mark_dropped
from ssehub.stores._sqlite_tail import Span, Tail

MAX_TAIL = 100_000  # events not folded past which a fold starts before its time
# A slice of a fold: at most about this many events, or this many users (each a page of
# ``user_events`` to write). A publish that arrives while a slice is written waits for it:
# 0.2-0.3 ms of the writer's CPU for such a slice under a steady load, 1.4-1.6 ms folding
# a burst, against 1-2 ms (32 users) and 5 ms (2,000 events of a burst) before.
SLICE_ROWS = 500
SLICE_USERS = 8
DROP_ROWS = 500  # ``events`` rows a slice deletes (2,000 took 5-8 ms of the writer's CPU)

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
_SET_UPTO = "UPDATE meta SET value = ? WHERE name = 'user_events_upto'"
_DROP_FOLDED = "DELETE FROM user_events WHERE user_id = ? AND id <= ?"
_DROP_EVENTS = "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1))"

Floors = list[tuple[str, int]]


def fold_by_range(cur: sqlite3.Cursor, upto: int, last_id: int) -> None:
    """Fold every event after the mark ``upto`` and move the mark to ``last_id`` (the
    newest id given out), whatever memory holds: on opening the file, after a rollback."""
    if upto < last_id:
        cur.execute(_FOLD_AFTER, (upto,))
        cur.execute(_SET_UPTO, (last_id,))


def write_floors(cur: sqlite3.Cursor, floors: Floors) -> None:
    """Users' ``(user_id, floor)``: their rows up to it leave ``user_events``, and
    ``trimmed`` keeps it."""
    if floors:
        cur.executemany(_DROP_FOLDED, floors)
        mark_dropped(cur, floors)


def drop_events(cur: sqlite3.Cursor, ids: list[int]) -> None:
    """Delete the ``events`` rows of these ids (each below its user's written floor)."""
    if ids:
        cur.execute(_DROP_EVENTS, (json.dumps(ids),))


class _Slice:
    """One transaction's share of a fold: ids to fold, floors to write, rows to delete."""

    __slots__ = ("dropped", "floors", "ids", "last")

    def __init__(self, ids: list[int], floors: Floors, dropped: list[int]) -> None:
        self.ids = ids
        self.floors = floors
        self.dropped = dropped
        self.last = False  # the last slice of users: it moves the mark


class Folds:
    """When the writer folds the tail into the file, and the slices of a fold under way.
    Every method runs on the writer thread.

    Args:
        tail: what memory holds.
        interval: seconds between folds.
    """

    def __init__(self, tail: Tail, interval: float) -> None:
        self.tail = tail
        self.interval = interval
        # The slice of the fold under way to write next, and the rest, each made only
        # when the one before is done (a fold's slices, all made at its start, took 1-3
        # ms of the writer's CPU at once: the publishes of that moment waited for them).
        self._slice: _Slice | None = None
        self._coming: Iterator[_Slice] = iter(())
        self._target = 0  # the mark the fold under way moves to
        self._whole = False  # fold every event after the mark at once (after a rollback)
        self._at = time.monotonic()  # of the last fold's end
        self._stepped = False  # the transaction under way folds (a slice, or the whole)

    @property
    def under_way(self) -> bool:
        """A fold has slices left."""
        return self._slice is not None

    def wait(self) -> float | None:
        """Seconds an idle writer waits before its next slice; None: nothing to fold."""
        if self._slice is not None:
            return 0.0
        if not self.tail.size and not self._whole:
            return None
        return max(0.0, self._at + self.interval - time.monotonic())

    def due(self) -> bool:
        """`step` has something to do now."""
        wait = self.wait()
        return wait is not None and (wait == 0.0 or self.pressing)

    @property
    def pressing(self) -> bool:
        """So many events wait to be folded that a slice goes before waiting appends."""
        return self.tail.size >= MAX_TAIL

    def step(self, cur: sqlite3.Cursor, last_id: int) -> None:
        """Inside a transaction of the writer's own (no jobs in it): fold what is due.

        ``last_id`` is the newest id given out. Call `committed` after the commit, or
        `rolled_back`.
        """
        self._stepped = False
        if self._whole:  # by range, whatever memory holds
            if self.wait():
                return
            self._target = last_id
            self.fold_all(cur, last_id)
            self._stepped = True
            return
        if self._slice is None:
            if not self.tail.size:
                return
            if self.tail.size < MAX_TAIL and self.wait():
                return
            self._target = last_id
            self._coming = _slices(self.tail.cut(last_id))
            self._slice = next(self._coming)  # there is always a last one
        self._stepped = True
        part = self._slice
        if part.ids:
            cur.execute(_FOLD_IDS, (json.dumps(part.ids),))
        write_floors(cur, part.floors)
        drop_events(cur, part.dropped)
        if part.last:
            cur.execute(_SET_UPTO, (self._target,))

    def committed(self) -> None:
        """The transaction of the last `step` is committed."""
        if not self._stepped:
            return
        self._stepped = False
        if self._whole:
            self._whole = False
            self.tail.start(self._target)  # readers of older snapshots scan instead
        elif self._slice is not None:
            if self._slice.last:
                self.tail.folded(self._target)
            self._slice = next(self._coming, None)
            if self._slice is not None:
                return
        self._at = time.monotonic()

    def rolled_back(self) -> None:
        """The transaction of the last `step` is rolled back.

        Ids it gave out may be given again, to rows memory would file after the fold's
        mark: the next transaction folds every event after the mark by range instead.
        """
        self._stepped = False
        self._whole = True
        self._at = time.monotonic()  # not at once: the disk may still refuse

    def fold_all(self, cur: sqlite3.Cursor, last_id: int) -> None:
        """Fold every event after the mark by range, write every floor memory holds and
        delete every row dropped below them (when the writer stops, or after a
        rollback); a fold under way is given up. ``last_id``: the newest id given out."""
        fold_by_range(cur, self.tail.upto, last_id)
        floors, dropped = self.tail.floors()
        self._slice = None
        self._coming = iter(())
        write_floors(cur, sorted(floors.items()))
        drop_events(cur, sorted(dropped))


def _slices(closed: Span) -> Iterator[_Slice]:
    """A fold of ``closed``: slices of a few users each, in user order (the last moves
    the mark, even if it is empty), then the rows dropped, in id order."""
    ids: list[int] = []
    floors: Floors = []
    users = 0
    for user_id in sorted(closed.ids.keys() | closed.floors.keys()):
        mine = closed.ids.get(user_id, [])
        floor = closed.floors.get(user_id)
        if floor is not None:
            floors.append((user_id, floor))
            mine = [n for n in mine if n > floor]
        ids += mine
        users += 1
        if len(ids) >= SLICE_ROWS or users >= SLICE_USERS:
            yield _Slice(ids, floors, [])
            ids, floors, users = [], [], 0
    last = _Slice(ids, floors, [])
    last.last = True
    yield last
    dropped = sorted(closed.dropped)
    for start in range(0, len(dropped), DROP_ROWS):
        yield _Slice([], [], dropped[start : start + DROP_ROWS])
