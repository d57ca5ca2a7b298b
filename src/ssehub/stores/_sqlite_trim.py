"""The SQLite store's retention by count and by age, applied by the writer as it appends.

Once a user holds as many events as retention keeps, each message to them drops their
oldest. Deleting that row at once dirtied a page of ``events``, one of ``user_events``
and one of ``trimmed`` for every message (35 µs of CPU instead of 5). So dropping a
user's oldest events only raises their floor, the newest id dropped: every read skips
the user's rows up to it (`UserLog.floor`). The writer hands the floors it moved to
memory after each commit (`Tail.trimmed`), and the next fold writes them to the file and
deletes the rows (`ssehub.stores._sqlite_folds`). Broadcasts (one row for many users,
read through sessions) are deleted at once, as before: there are few of them.
"""

from __future__ import annotations

import collections
import sqlite3

from ssehub.stores._sqlite_folds import drop_events, write_floors
from ssehub.stores._sqlite_sql import BROADCAST
from ssehub.stores._sqlite_tail import Tail, UserLog
from ssehub.stores.base import Retention

_USERS_KEPT = 65_536  # users whose kept events the writer remembers
_READ_AHEAD = 16  # ids of a user's oldest kept events read at once, to drop one by one
_AGE_CHUNK = 256  # a user's events read at once while dropping by age


class _Kept:
    """What the writer knows of one user's kept events."""

    __slots__ = ("count", "floor", "oldest", "upcoming")

    def __init__(self, count: int, floor: int, oldest: float) -> None:
        self.count = count  # events after the floor
        self.floor = floor  # the newest id dropped
        self.oldest = oldest  # ``created`` of the oldest kept
        self.upcoming: collections.deque[int] = collections.deque()  # ids of the oldest kept


class Trimmer:
    """Drops users' oldest events past what retention keeps. Runs on the writer thread,
    inside its transactions.

    Args:
        tail: what memory holds (floors are handed to it on `committed`).
        retention: how much history to keep per user.
    """

    def __init__(self, tail: Tail, retention: Retention) -> None:
        self.tail = tail
        self.retention = retention
        self._kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()  # an LRU
        self._floors: dict[str, int] = {}  # moved in the transaction under way
        self._dropped: list[int] = []  # ids of the rows those floors left behind

    def trim(self, cur: sqlite3.Cursor, user_id: str, added: int, now: float) -> None:
        """``added`` events of ``user_id`` were just inserted, at ``now``: drop what is
        beyond retention."""
        kept = self._kept.pop(user_id, None)
        log = None
        if kept is None:
            log = UserLog(cur, self.tail, self.tail.upto)
            floor = max(log.floor(user_id), self._floors.get(user_id, 0))
            first = log.rows(user_id, floor, 1, "created")
            kept = _Kept(log.count(user_id, floor), floor, first[0][1] if first else now)
        else:
            kept.count += added
        excess = kept.count - self.retention.max_events
        cutoff = now - self.retention.max_age
        if kept.oldest < cutoff:  # maybe: ``oldest`` may be older than the oldest kept
            log = log or UserLog(cur, self.tail, self.tail.upto)
            self._drop_old(log, user_id, kept, excess, now)
        elif excess > 0:
            log = log or UserLog(cur, self.tail, self.tail.upto)
            self._drop_oldest(log, user_id, kept, excess)
        self._kept[user_id] = kept
        if len(self._kept) > _USERS_KEPT:
            self._kept.popitem(last=False)

    def _drop_oldest(self, log: UserLog, user_id: str, kept: _Kept, excess: int) -> None:
        """Drop the user's ``excess`` oldest events. Their ids come from ``user_events``
        alone, a few at a time: ``created`` is not read (its rows are spread over the
        table's pages), so ``kept.oldest`` stays a bound that may be older."""
        upcoming = kept.upcoming
        if len(upcoming) < excess:
            after = upcoming[-1] if upcoming else kept.floor
            upcoming.extend(log.ids(user_id, after, excess - len(upcoming) + _READ_AHEAD))
        dropped = [upcoming.popleft() for _ in range(min(excess, len(upcoming)))]
        if dropped:
            self._dropped_now(log, user_id, kept, dropped)

    def _drop_old(self, log: UserLog, user_id: str, kept: _Kept, excess: int, now: float) -> None:
        """Drop the user's ``excess`` oldest events and every one older than retention's
        maximum age at ``now``."""
        cutoff = now - self.retention.max_age
        kept.upcoming.clear()
        dropped: list[int] = []
        after, chunk = kept.floor, max(excess + 1, _AGE_CHUNK)
        kept.oldest = now  # none kept, unless a row says otherwise: none is older
        while True:
            rows = log.rows(user_id, after, chunk, "created")
            for row_id, created in rows:
                if len(dropped) >= excess and created >= cutoff:
                    kept.oldest = created
                    break
                dropped.append(row_id)
            else:
                if len(rows) == chunk:
                    after, chunk = rows[-1][0], _AGE_CHUNK
                    continue
            break
        if dropped:
            self._dropped_now(log, user_id, kept, dropped)

    def _dropped_now(self, log: UserLog, user_id: str, kept: _Kept, dropped: list[int]) -> None:
        kept.count -= len(dropped)
        kept.floor = dropped[-1]
        self._drop(log.cur, user_id, dropped)

    def _drop(self, cur: sqlite3.Cursor, user_id: str, dropped: list[int]) -> None:
        if user_id != BROADCAST:  # the floor now, the rows with the next fold
            self._floors[user_id] = dropped[-1]
            self._dropped += dropped
            return
        write_floors(cur, [(user_id, dropped[-1])])
        drop_events(cur, dropped)

    def forget(self, user_id: str) -> None:
        """Rows of ``user_id`` were deleted some other way (the sweep): read them again."""
        self._kept.pop(user_id, None)

    def write(self, cur: sqlite3.Cursor) -> None:
        """Write the floors moved in the transaction under way and delete the rows below
        them now, not with a fold (when the file opens, before anyone reads)."""
        write_floors(cur, sorted(self._floors.items()))
        drop_events(cur, sorted(self._dropped))
        self._floors, self._dropped = {}, []

    def committed(self) -> None:
        """The transaction is committed: readers may skip what it dropped."""
        if self._floors:
            self.tail.trimmed(self._floors, self._dropped)
            self._floors, self._dropped = {}, []

    def rolled_back(self) -> None:
        """The transaction is rolled back: nothing it dropped was, and what the writer
        remembers may count rows that are gone."""
        self._floors, self._dropped = {}, []
        self._kept.clear()
