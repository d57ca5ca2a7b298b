"""The SQLite store's folds in slices, driven one transaction at a time on a real file.

The writer folds the ids it keeps in memory into ``user_events`` a slice of users per
transaction, and moves the mark with the last slice; every read in between must see
each event exactly once (the table's rows after the mark are ignored, memory has them).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssehub.stores._sqlite_folds import SLICE_USERS, Folds
from ssehub.stores._sqlite_sql import SCHEMA
from ssehub.stores._sqlite_tail import UPTO, Tail, UserLog

USERS = [f"user-{n:03}" for n in range(SLICE_USERS * 3 + 5)]  # a fold of four slices


class File:
    """A file with the store's schema, a writing and a reading connection."""

    def __init__(self, path: Path) -> None:
        self.writer = sqlite3.connect(path, isolation_level=None)
        self.writer.execute("PRAGMA journal_mode=WAL")
        self.writer.executescript(SCHEMA)
        self.reader = sqlite3.connect(path, isolation_level=None)
        self.tail = Tail()
        self.folds = Folds(self.tail, interval=0.000_001)
        self.sent: dict[str, list[int]] = {user: [] for user in USERS}
        self.floors: dict[str, int] = {}  # the newest id dropped, of users who lost any

    def close(self) -> None:
        self.writer.close()
        self.reader.close()

    def append(self, rounds: int) -> None:
        """``rounds`` events to every user in one transaction, as the writer appends."""
        cur = self.writer.cursor()
        cur.execute("BEGIN IMMEDIATE")
        pairs = []
        for _ in range(rounds):
            for user in USERS:
                cur.execute(
                    "INSERT INTO events (user_id, created, payload) VALUES (?, 1e10, x'00')",
                    (user,),
                )
                pairs.append((user, int(cur.lastrowid or 0)))
        self.tail.add(pairs)
        cur.execute("COMMIT")
        for user, event_id in pairs:
            self.sent[user].append(event_id)

    def drop_oldest(self, users: list[str], count: int) -> None:
        """Retention drops the ``count`` oldest events of each of ``users``, as the writer
        does after a commit: the floors go to memory, the rows stay in the file."""
        floors = {}
        dropped: list[int] = []
        for user in users:
            gone, self.sent[user] = self.sent[user][:count], self.sent[user][count:]
            floors[user] = self.floors[user] = gone[-1]
            dropped += gone
        self.tail.trimmed(floors, dropped)

    def last_id(self) -> int:
        found = self.writer.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        row = found.fetchone()
        return int(row[0]) if row else 0

    def fold_step(self) -> None:
        """One writer transaction with nothing in it but what the folds do."""
        cur = self.writer.cursor()
        cur.execute("BEGIN IMMEDIATE")
        self.folds.step(cur, self.last_id())
        cur.execute("COMMIT")
        self.folds.committed()

    def mark(self) -> int:
        return int(self.writer.execute(UPTO).fetchone()[0])

    def rows_after_mark(self) -> int:
        found = self.writer.execute("SELECT count(*) FROM user_events WHERE id > ?", (self.mark(),))
        return int(found.fetchone()[0])

    def assert_reads_see_each_event_once(self) -> None:
        cur = self.reader.cursor()
        cur.execute("BEGIN")
        log = UserLog(cur, self.tail)
        for user in USERS:
            assert [row[0] for row in log.rows(user, 0, 10_000)] == self.sent[user]
            assert log.count(user) == len(self.sent[user])
            assert log.newest(user) == self.sent[user][-1]
            half = len(self.sent[user]) // 2
            if half:
                after = self.sent[user][half - 1]
                assert log.count(user, after) == len(self.sent[user]) - half
        cur.execute("COMMIT")


@pytest.fixture
def file(tmp_path: Path) -> Iterator[File]:
    opened = File(tmp_path / "folds.db")
    yield opened
    opened.close()


def test_reads_between_the_slices_of_a_fold_see_every_event_once(file: File) -> None:
    file.append(rounds=3)
    file.assert_reads_see_each_event_once()
    steps = 0
    while file.mark() == 0:
        file.fold_step()
        steps += 1
        if file.mark() == 0:  # a slice is in the table, after the mark
            assert file.rows_after_mark() == 3 * SLICE_USERS * steps
        file.assert_reads_see_each_event_once()
        file.append(rounds=1)  # events keep coming while the fold goes on
        file.assert_reads_see_each_event_once()
    assert steps == 4
    assert file.mark() == file.sent[USERS[-1]][2]  # the newest id when the fold began
    assert file.rows_after_mark() == 0


def test_a_fold_rolled_back_half_way_is_done_again_by_range(file: File) -> None:
    file.append(rounds=2)
    file.fold_step()  # one slice in the table
    cur = file.writer.cursor()
    cur.execute("BEGIN IMMEDIATE")  # the next slice and new events, then a failure
    cur.execute("INSERT INTO events (user_id, created, payload) VALUES ('lost', 1e10, x'00')")
    file.folds.step(cur, file.last_id())
    cur.execute("ROLLBACK")
    file.folds.rolled_back()
    file.append(rounds=1)  # the id the rollback freed is given again
    file.assert_reads_see_each_event_once()
    while file.mark() < file.last_id():
        file.fold_step()
        file.assert_reads_see_each_event_once()
    everything = file.writer.execute("SELECT user_id, id FROM events ORDER BY user_id, id")
    assert file.writer.execute("SELECT * FROM user_events").fetchall() == everything.fetchall()


def test_floors_are_written_and_dropped_rows_deleted_in_the_slices_of_a_fold(file: File) -> None:
    file.append(rounds=3)
    file.drop_oldest(USERS[::3], 2)
    file.assert_reads_see_each_event_once()
    folds = 0
    while folds < 2:  # the second fold writes what was dropped during the first
        file.fold_step()
        file.assert_reads_see_each_event_once()
        if not file.folds.under_way:
            folds += 1
            file.append(rounds=1)
            file.drop_oldest(USERS[1::3], 1)
            file.assert_reads_see_each_event_once()
    while file.folds.under_way or file.tail.size:
        file.fold_step()
    file.assert_reads_see_each_event_once()
    kept = sorted((user, event_id) for user, ids in file.sent.items() for event_id in ids)
    assert file.writer.execute("SELECT user_id, id FROM events ORDER BY 1, 2").fetchall() == kept
    assert file.writer.execute("SELECT * FROM user_events ORDER BY 1, 2").fetchall() == kept
    floors = file.writer.execute("SELECT user_id, dropped_id FROM trimmed").fetchall()
    assert dict(floors) == file.floors


def test_reads_in_parts_of_the_tail_skip_the_ids_memory_holds_that_a_snapshot_lacks(
    file: File,
) -> None:
    file.append(rounds=40)
    user = USERS[0]
    sent = file.sent[user]
    gone = set(sent[1:30:2])  # rows deleted behind memory's back (as the age sweep does)
    file.writer.executemany("DELETE FROM events WHERE id = ?", [(n,) for n in sorted(gone)])
    kept = [n for n in sent if n not in gone]
    cur = file.reader.cursor()
    cur.execute("BEGIN")  # a snapshot older than what comes next
    log = UserLog(cur, file.tail)
    file.append(rounds=100)  # candidates in memory this snapshot does not hold
    assert [row[0] for row in log.rows(user, 0, 5)] == kept[:5]
    assert log.ids(user, kept[3], 7) == kept[4:11]
    assert log.ids(user, 0, 1000) == kept
    assert log.count(user) == len(kept)
    assert log.newest(user) == kept[-1]
    cur.execute("COMMIT")
    cur.execute("BEGIN")
    log = UserLog(cur, file.tail)
    assert log.newest(user) == file.sent[user][-1]
    assert log.ids(user, kept[-1], 3) == file.sent[user][40:43]
    cur.execute("COMMIT")
