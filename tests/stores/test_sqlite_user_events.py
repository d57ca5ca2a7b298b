"""The SQLite store's per-user index: ``user_events``, a tail kept in memory, and folds.

Rows newer than the last fold are in no index but the writer's memory; every answer
must be the same whether a user's rows are folded into ``user_events`` yet or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import ConfigurationError
from ssehub.stores import MemoryStore, ReadResult, Retention, Store, UserRecord, _sqlite_writer
from ssehub.stores._sqlite_folds import MAX_TAIL, SLICE_USERS
from ssehub.stores._sqlite_writer import MAX_BATCH_EVENTS
from tests.stores.conftest import (
    Opener,
    RecordingListener,
    later_than_any,
    trace,
    transactions,
)

pytestmark = pytest.mark.anyio

FOREVER = 3600.0  # an index_interval no test outlives: the tail is folded only on opening

Row = tuple[object, ...]


def rows(path: Path, query: str) -> list[Row]:
    """What the file holds, read with a connection of its own (WAL: also while open)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(query).fetchall()


def events_rows(path: Path) -> list[Row]:
    return rows(path, "SELECT user_id, id FROM events ORDER BY id, user_id")


def indexed_rows(path: Path) -> list[Row]:
    return rows(path, "SELECT user_id, id FROM user_events ORDER BY id, user_id")


def folded_upto(path: Path) -> int:
    (row,) = rows(path, "SELECT value FROM meta WHERE name = 'user_events_upto'")
    value = row[0]
    assert isinstance(value, int)
    return value


def assert_the_index_holds_what_meta_claims(path: Path) -> None:
    upto = folded_upto(path)
    claimed = {row for row in events_rows(path) if isinstance(row[1], int) and row[1] <= upto}
    assert claimed <= set(indexed_rows(path))


def payloads_of(result: ReadResult) -> list[bytes]:
    return [event.payload for event in result.events]


async def until(done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once ``done()`` is true (polling the file); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.01)


# -- one small history, answered from the tail, after a fold and after a restart --------

ALICE = [b"data: a0\n", b"data: a1\n", b"data: a2\n", b"data: a3\n", b"data: a4\n"]
BATCH = [
    ("bob", b"data: b0\n"),
    ("alice", b"data: a3\n"),
    ("bob", b"data: b1\n"),
    ("carol", b"data: c0\n"),
    ("alice", b"data: a4\n"),
    ("bob", b"data: b2\n"),
]
ALL = b"data: all\n"
AFTER = [("alice", b"data: a5\n"), ("bob", b"data: b3\n"), ("alice", b"data: a6\n")]
EXPECTED = {
    "alice": [*ALICE, ALL, b"data: a5\n", b"data: a6\n"],
    "bob": [b"data: b0\n", b"data: b1\n", b"data: b2\n", ALL, b"data: b3\n"],
    "carol": [b"data: c0\n", ALL],
}


async def fill(store: Store, listener: RecordingListener) -> dict[str, list[StoredEvent]]:
    """Appends one by one, a batch naming users several times and a broadcast (carol
    watches: she shares its row; alice and bob get rows of their own); return what
    each user was given, in order."""
    await store.watch("carol")
    await store.set_presence("carol", connections=1)
    for payload in ALICE[:3]:
        await store.append("alice", payload)
    await store.append_many(BATCH)
    assert await store.append_to_all(["alice", "bob", "carol"], ALL) == 3
    await store.append_many(AFTER)
    given = {user: [e for u, e in listener.events if u == user] for user in EXPECTED}
    assert {user: [e.payload for e in events] for user, events in given.items()} == EXPECTED
    await store.set_presence("alice", connections=0, cursor=given["alice"][1].id)
    return given


async def assert_answers(
    store: Store, given: dict[str, list[StoredEvent]], *, carol_connected: bool
) -> None:
    """Everything a reader can ask of the history `fill` wrote, and what must come back."""
    for user, events in given.items():
        assert await store.read_after(user, None, limit=100) == ReadResult(events)
        for k, event in enumerate(events):
            assert await store.read_after(user, event.id, limit=100) == ReadResult(events[k + 1 :])
        for limit in (1, 2, 3):
            pages: list[StoredEvent] = []
            after: str | None = None
            while page := (await store.read_after(user, after, limit=limit)).events:
                assert len(page) <= limit
                pages += page
                after = page[-1].id
            assert pages == events
        beyond = await store.read_after(user, later_than_any(events[-1].id), limit=100)
        assert beyond == ReadResult(events, reset=True)
    stranger = await store.read_after("nobody", given["alice"][0].id, limit=100)
    assert stranger == ReadResult([], reset=True)
    alice = await store.get_user("alice")
    assert (alice.known, alice.cursor, alice.pending) == (True, given["alice"][1].id, 6)
    bob = await store.get_user("bob")
    assert (bob.known, bob.pending) == (False, 5)
    carol = (1, 0) if carol_connected else (0, 2)  # connections, pending
    record = await store.get_user("carol")
    assert (record.connections, record.pending) == carol
    listed = [(r.user_id, r.connections, r.pending) for r in await store.list_users()]
    assert listed == [("alice", 0, 6), ("carol", *carol)]


async def test_reads_see_events_not_yet_folded(open_sqlite: Opener, tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    listener = RecordingListener()
    store = await open_sqlite(index_interval=FOREVER, listener=listener)
    given = await fill(store, listener)
    await assert_answers(store, given, carol_connected=True)
    # The file has every row, and none of the users' rows is indexed yet: only the
    # broadcast's own row (carol's copy), which is indexed at once.
    (shared,) = [int(event.id) for event in given["carol"] if event.payload == ALL]
    own = {(user, int(e.id)) for user, events in given.items() for e in events}
    expected = sorted(own - {("carol", shared)} | {("", shared)}, key=lambda row: row[1])
    assert events_rows(path) == expected
    assert indexed_rows(path) == [("", shared)]
    assert_the_index_holds_what_meta_claims(path)


async def test_opening_the_file_again_folds_the_tail_and_answers_the_same(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    listener = RecordingListener()
    store = await open_sqlite(index_interval=FOREVER, listener=listener)
    given = await fill(store, listener)
    await store.unwatch("carol")
    await store.set_presence("carol", connections=0)
    await store.close()

    again = await open_sqlite(path, index_interval=FOREVER)
    await assert_answers(again, given, carol_connected=False)
    assert indexed_rows(path) == events_rows(path)
    (newest,) = rows(path, "SELECT max(id) FROM events")
    assert folded_upto(path) == newest[0]
    # New rows go to the tail again, and reads merge it with what is folded.
    more = await again.append_many([("alice", b"data: a7\n"), ("carol", b"data: c1\n")])
    given["alice"].append(more[0])
    given["carol"].append(more[1])
    assert indexed_rows(path) != events_rows(path)
    for user, events in given.items():
        for limit in (1, 2, 100):
            result = await again.read_after(user, events[-3].id, limit=limit)
            assert result == ReadResult(events[-2:][:limit])
        assert await again.read_after(user, None, limit=100) == ReadResult(events)
    assert (await again.get_user("alice")).pending == 7


KILLED_WRITER = """
import asyncio, os, signal, sys
from ssehub.stores.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1], index_interval=3600.0)
    await store.start()
    await store.watch("alice")
    for n in range(3):
        await store.append("alice", b"data: a%d\\n" % n)
    await store.append_many(
        [("bob", b"data: b0\\n"), ("alice", b"data: a3\\n"), ("bob", b"data: b1\\n"),
         ("alice", b"data: a4\\n")]
    )
    await store.append_to_all(["alice", "bob"], b"data: all\\n")
    await store.append("bob", b"data: b2\\n")
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def run_until_killed(script: str, path: Path) -> None:
    """Run ``script`` on the file ``path`` in a child process that kills itself (-9)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
    async with asyncio.timeout(30):
        assert await process.wait() == -9


async def test_rows_written_before_a_kill_are_folded_when_the_file_opens_again(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    await run_until_killed(KILLED_WRITER, path)
    assert [row for row in indexed_rows(path) if row[0] != ""] == []  # nothing was folded
    store = await open_sqlite(path, index_interval=FOREVER)
    alice = [*ALICE, ALL]
    bob = [b"data: b0\n", b"data: b1\n", ALL, b"data: b2\n"]
    assert payloads_of(await store.read_after("alice", None, limit=100)) == alice
    assert payloads_of(await store.read_after("bob", None, limit=100)) == bob
    first = (await store.read_after("alice", None, limit=1)).events[0]
    assert payloads_of(await store.read_after("alice", first.id, limit=100)) == alice[1:]
    assert indexed_rows(path) == events_rows(path)
    (newest,) = rows(path, "SELECT max(id) FROM events")
    assert folded_upto(path) == newest[0]
    later = await store.append("alice", b"data: after\n")
    assert int(later.id) > newest[0]
    assert payloads_of(await store.read_after("alice", None, limit=100)) == [*alice, later.payload]


async def test_the_writer_folds_the_tail_while_the_store_runs(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    listener = RecordingListener()
    store = await open_sqlite(index_interval=0.05, listener=listener)
    given = await fill(store, listener)
    await assert_answers(store, given, carol_connected=True)
    await until(lambda: indexed_rows(path) == events_rows(path))
    await assert_answers(store, given, carol_connected=True)
    assert_the_index_holds_what_meta_claims(path)
    more = await store.append_many([("alice", b"data: a7\n"), ("bob", b"data: b4\n")])
    given["alice"].append(more[0])
    given["bob"].append(more[1])
    await until(lambda: indexed_rows(path) == events_rows(path))
    (newest,) = rows(path, "SELECT max(id) FROM events")
    await until(lambda: folded_upto(path) == newest[0])
    for user, events in given.items():
        assert await store.read_after(user, None, limit=100) == ReadResult(events)
        assert await store.read_after(user, events[-2].id, limit=100) == ReadResult(events[-1:])


# -- retention ----------------------------------------------------------------------------


async def assert_newest_three_of(store: Store, sent: list[StoredEvent]) -> None:
    kept = sent[-3:]
    assert await store.read_after("alice", None, limit=100) == ReadResult(kept)
    for dropped in sent[:-4]:
        assert await store.read_after("alice", dropped.id, limit=100) == ReadResult(kept, True)
    assert await store.read_after("alice", sent[-4].id, limit=100) == ReadResult(kept)
    assert await store.read_after("alice", sent[-2].id, limit=100) == ReadResult(kept[2:])
    assert await store.read_after("alice", sent[-3].id, limit=1) == ReadResult(kept[1:2])
    assert (await store.get_user("alice")).pending == 3


def ids_of(path: Path, table: str, user_id: str) -> list[int]:
    found = rows(path, f"SELECT id FROM {table} WHERE user_id = '{user_id}' ORDER BY id")
    return [row_id for (row_id,) in found if isinstance(row_id, int)]


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "one-batch"])
async def test_retention_by_count_drops_rows_still_in_the_tail(
    open_sqlite: Opener, tmp_path: Path, batched: bool
) -> None:
    path = tmp_path / "hub.db"
    retention = Retention(max_events=3)
    store = await open_sqlite(retention=retention, index_interval=FOREVER)
    bob = await store.append("bob", b"data: bob\n")
    items = [("alice", f"data: {n}\n".encode()) for n in range(10)]
    if batched:
        sent = await store.append_many(items)
    else:
        sent = [await store.append(user, payload) for user, payload in items]
    await assert_newest_three_of(store, sent)
    assert ids_of(path, "user_events", "alice") == []
    await store.close()  # the rows dropped leave the file with it (no fold ran)
    assert ids_of(path, "events", "alice") == [int(event.id) for event in sent[-3:]]

    again = await open_sqlite(path, retention=retention, index_interval=FOREVER)
    await assert_newest_three_of(again, sent)
    assert await again.read_after("bob", None, limit=10) == ReadResult([bob])
    assert indexed_rows(path) == events_rows(path)


async def test_retention_by_count_drops_folded_rows_and_tail_rows_together(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    retention = Retention(max_events=3)
    store = await open_sqlite(retention=retention, index_interval=FOREVER)
    sent = [await store.append("alice", f"data: {n}\n".encode()) for n in range(5)]
    await store.close()
    store = await open_sqlite(path, retention=retention, index_interval=FOREVER)
    assert ids_of(path, "user_events", "alice") == [int(event.id) for event in sent[-3:]]
    await assert_newest_three_of(store, sent)
    # Two in the tail: one folded row dropped, two kept; then the folded ones all go.
    sent += [await store.append("alice", f"data: {n}\n".encode()) for n in range(5, 7)]
    await assert_newest_three_of(store, sent)
    sent += [await store.append("alice", f"data: {n}\n".encode()) for n in range(7, 10)]
    await assert_newest_three_of(store, sent)
    await store.close()  # the rows dropped leave the file with it (no fold ran)
    kept = [int(event.id) for event in sent[-3:]]
    assert ids_of(path, "events", "alice") == kept
    assert set(ids_of(path, "user_events", "alice")) <= set(kept)  # no index of a dropped row

    again = await open_sqlite(path, retention=retention, index_interval=FOREVER)
    await assert_newest_three_of(again, sent)
    assert indexed_rows(path) == events_rows(path)


async def test_retention_by_age_drops_folded_rows_and_tail_rows(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    retention = Retention(max_age=0.6)
    store = await open_sqlite(retention=retention, index_interval=FOREVER)
    folded = await store.append_many(
        [
            ("alice", b"data: old a0\n"),
            ("bob", b"data: old b\n"),
            ("dave", b"data: old d0\n"),
            ("dave", b"data: old d1\n"),
        ]
    )
    await store.close()
    store = await open_sqlite(path, retention=retention, index_interval=FOREVER)
    tail = await store.append_many([("alice", b"data: old a1\n"), ("carol", b"data: old c\n")])
    assert ids_of(path, "user_events", "alice") == [int(folded[0].id)]
    # The passing of time is what is tested here: dave's new event is appended before
    # his old one expires, and the sweep runs after that and before the new one expires.
    await asyncio.sleep(0.35)
    young = await store.append("dave", b"data: young d\n")
    await asyncio.sleep(0.4)
    fresh = await store.append("alice", b"data: fresh\n")  # trims alice on append
    assert await store.read_after("alice", None, limit=10) == ReadResult([fresh])
    assert await store.read_after("alice", folded[0].id, limit=10) == ReadResult([fresh], True)
    assert await store.read_after("alice", tail[0].id, limit=10) == ReadResult([fresh])
    # bob's and dave's folded rows, carol's tail row, and alice's two: dropped when she
    # was sent ``fresh``, their rows stay in the file until a fold or a sweep.
    assert await store.sweep() == 6

    async def assert_what_is_left(store: Store) -> None:
        for user, event in (("bob", folded[1]), ("carol", tail[1])):
            assert await store.read_after(user, None, limit=10) == ReadResult([])
            assert (await store.read_after(user, event.id, limit=10)).reset
            assert (await store.get_user(user)).pending == 0
        # dave's folded rows are gone and only his tail row is left: the mark of what was
        # dropped must stay, so his oldest id still reads as a reset.
        assert await store.read_after("dave", None, limit=10) == ReadResult([young])
        assert await store.read_after("dave", folded[2].id, limit=10) == ReadResult([young], True)
        assert await store.read_after("dave", folded[3].id, limit=10) == ReadResult([young])
        assert (await store.get_user("dave")).pending == 1

    await assert_what_is_left(store)
    kept = [("alice", int(fresh.id)), ("dave", int(young.id))]
    assert sorted(events_rows(path)) == sorted(kept)
    assert set(indexed_rows(path)) <= set(kept)
    await store.close()
    again = await open_sqlite(path, retention=Retention(), index_interval=FOREVER)
    await assert_what_is_left(again)
    assert await again.read_after("alice", None, limit=10) == ReadResult([fresh])
    assert indexed_rows(path) == events_rows(path)


async def test_a_tail_grown_large_is_folded_before_the_interval(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite(index_interval=FOREVER, retention=Retention(max_events=10**6))
    items = [(f"u{n % 2}", f"data: {n}\n".encode()) for n in range(MAX_TAIL + 10)]
    given: dict[str, list[StoredEvent]] = {"u0": [], "u1": []}
    for start in range(0, len(items), MAX_BATCH_EVENTS):
        chunk = items[start : start + MAX_BATCH_EVENTS]
        for (user, _), event in zip(chunk, await store.append_many(chunk), strict=True):
            given[user].append(event)
    # Without waiting for the interval: a slice in each transaction, then at once when idle.
    await until(lambda: folded_upto(path) >= MAX_TAIL)
    assert_the_index_holds_what_meta_claims(path)
    for user, events in given.items():
        assert await store.read_after(user, None, limit=3) == ReadResult(events[:3])
        for k in (len(events) // 2, -20, -2):  # in the folded rows, across, in the tail
            result = await store.read_after(user, events[k].id, limit=100)
            assert result == ReadResult(events[k + 1 :][:100])
        assert (await store.get_user(user)).pending == len(events)


# -- a model: the MemoryStore answers what every SQLite store must ------------------------

USERS = [f"u{n}" for n in range(5)]
INTERVALS = (0.001, 0.02, FOREVER)
Answer = tuple[object, ...]


class Replica:
    """One store under the model test, and the ids it gave each user, in order."""

    def __init__(
        self, name: str, store: Store, listener: RecordingListener, path: Path | None = None
    ) -> None:
        self.name = name
        self.store = store
        self.listener = listener
        self.path = path

    def ids(self, user_id: str) -> list[str]:
        return self.listener.ids_of(user_id)

    def id_at(self, user_id: str, k: int | None) -> str | None:
        """The id of the k-th event the store gave the user (None for None)."""
        if k is None:
            return None
        ids = self.ids(user_id)
        assert k < len(ids), f"{self.name} gave {user_id} only {len(ids)} events"
        return ids[k]

    def observed(self, record: UserRecord) -> Answer:
        cursor = None if record.cursor is None else self.ids(record.user_id).index(record.cursor)
        return (record.user_id, record.known, record.connections, cursor, record.pending)

    async def read(self, user_id: str, k: int | None, limit: int) -> Answer:
        """Payloads and reset of a read after the k-th id the store gave the user."""
        result = await self.store.read_after(user_id, self.id_at(user_id, k), limit=limit)
        got = [event.id for event in result.events]
        assert got == sorted(got, key=event_key), self.name
        assert set(got) <= set(self.ids(user_id)), self.name  # ids it gave the user only
        return payloads_of(result), result.reset


# "mixed": every kind of operation, retention not at work. Retention by count works per
# user's log in the MemoryStore but per broadcast row in the SQLite store, so with a
# small max_events, "trimmed" broadcasts only to users without streams (a row each, as
# a unicast), and in "broadcasts-trimmed" u0-u2 always watch, get every broadcast and
# no unicast, and u3-u4 never watch.
SCENARIOS = {
    "mixed": Retention(),
    "trimmed": Retention(max_events=4),
    "broadcasts-trimmed": Retention(max_events=4),
}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_every_fold_interval_answers_as_the_memory_store_does(
    open_sqlite: Opener, tmp_path: Path, scenario: str, seed: int
) -> None:
    rng = random.Random(f"{scenario}-{seed}")
    retention = SCENARIOS[scenario]
    memory = MemoryStore(retention=retention)
    reference = Replica("memory", memory, RecordingListener())
    memory.bind(reference.listener)
    await memory.start()
    replicas = [reference]
    for interval in INTERVALS:
        path = tmp_path / f"{interval}.db"
        listener = RecordingListener()
        store = await open_sqlite(
            path, retention=retention, index_interval=interval, listener=listener
        )
        replicas.append(Replica(f"sqlite index_interval={interval}", store, listener, path))
    intervals = dict(zip((r.name for r in replicas[1:]), INTERVALS, strict=True))
    connected: set[str] = set()
    watchers = USERS[:3] if scenario == "broadcasts-trimmed" else USERS
    unicast_users = USERS[3:] if scenario == "broadcasts-trimmed" else USERS

    def pick_k(user_id: str) -> int | None:
        given = len(reference.ids(user_id))
        return rng.randrange(given) if given and rng.random() < 0.8 else None

    def same(what: str, answers: list[Answer]) -> None:
        for replica, answer in zip(replicas[1:], answers[1:], strict=True):
            assert answer == answers[0], f"{what}: {replica.name} differs from memory"

    async def connect(user_id: str, op: int) -> None:
        connected.add(user_id)
        answers: list[Answer] = []
        for replica in replicas:  # as the hub opens a first stream
            await replica.store.watch(user_id)
            record = await replica.store.get_user(user_id)
            read = await replica.store.read_after(user_id, record.cursor, limit=1000)
            await replica.store.set_presence(user_id, connections=1)
            answers.append((replica.observed(record), payloads_of(read), read.reset))
        same(f"op {op}: {user_id} connects", answers)

    async def disconnect(user_id: str, cursor_k: int | None) -> None:
        connected.discard(user_id)
        for replica in replicas:
            await replica.store.unwatch(user_id)
            cursor = replica.id_at(user_id, cursor_k)
            await replica.store.set_presence(user_id, connections=0, cursor=cursor)

    async def check(op: int) -> None:
        for user_id in USERS:
            k, limit = pick_k(user_id), rng.choice([1000, 1000, 3])
            answers: list[Answer] = []
            for replica in replicas:
                whole = await replica.read(user_id, None, 1000)
                after = await replica.read(user_id, k, limit)
                record = replica.observed(await replica.store.get_user(user_id))
                answers.append((whole, after, record))
            same(f"op {op}: {user_id}, after its event {k}, limit {limit}", answers)
        listed: list[Answer] = []
        for replica in replicas:
            listed.append(tuple(replica.observed(r) for r in await replica.store.list_users()))
        same(f"op {op}: list_users", listed)

    async def restart(op: int) -> None:
        """Every stream closes, each SQLite file is opened again, the streams come back."""
        back = sorted(connected)
        for user_id in back:
            await disconnect(user_id, None)
        for replica in replicas[1:]:
            await replica.store.close()
            replica.store = await open_sqlite(
                replica.path,
                retention=retention,
                index_interval=intervals[replica.name],
                listener=replica.listener,
            )
        for user_id in back:
            await connect(user_id, op)

    if scenario == "broadcasts-trimmed":
        for user_id in watchers:
            await connect(user_id, -1)
    try:
        for op in range(300):
            roll = rng.random()
            if roll < 0.3:
                user_id = rng.choice(unicast_users)
                for replica in replicas:
                    await replica.store.append(user_id, f"data: {op}\n".encode())
            elif roll < 0.5:
                items = [
                    (rng.choice(unicast_users), f"data: {op}.{n}\n".encode())
                    for n in range(rng.randint(1, 6))
                ]
                for replica in replicas:
                    await replica.store.append_many(items)
            elif roll < 0.65:
                if scenario == "mixed":
                    listed = rng.sample(USERS, rng.randint(0, len(USERS)))
                elif scenario == "trimmed":
                    listed = [u for u in USERS if u not in connected and rng.random() < 0.6]
                else:
                    listed = [*watchers, *(u for u in USERS[3:] if rng.random() < 0.5)]
                for replica in replicas:
                    count = await replica.store.append_to_all(listed, f"data: {op}*\n".encode())
                    assert count == len(listed)
            elif roll < 0.75 and scenario != "broadcasts-trimmed":
                free = [u for u in USERS if u not in connected]
                if free:
                    await connect(rng.choice(free), op)
            elif roll < 0.85 and scenario != "broadcasts-trimmed":
                if connected:
                    user_id = rng.choice(sorted(connected))
                    await disconnect(user_id, pick_k(user_id))
            elif roll < 0.96:
                away = [u for u in unicast_users if u not in connected]
                if away:
                    user_id = rng.choice(away)
                    k = pick_k(user_id)
                    for replica in replicas:
                        cursor = replica.id_at(user_id, k)
                        await replica.store.set_presence(user_id, connections=0, cursor=cursor)
            else:
                await restart(op)
            if op % 5 == 4:
                await check(op)
    finally:
        await memory.close()


# -- reads racing the folds ---------------------------------------------------------------


async def test_reads_while_folds_run_see_each_user_s_events_once_in_order(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite(index_interval=0.001, retention=Retention(max_events=10**6))
    users = [f"u{n:02}" for n in range(20)]
    sent: dict[str, list[bytes]] = {user: [] for user in users}
    numbered = dict.fromkeys(users, 0)
    for user in users:  # known, and never connected: all they have is pending
        await store.set_presence(user, connections=0)
    writing = asyncio.Event()
    writing.set()

    async def write(seconds: float) -> int:
        rng = random.Random(1)
        deadline = time.monotonic() + seconds
        batches = 0
        try:
            while time.monotonic() < deadline:
                items = []
                for _ in range(rng.randint(1, 40)):
                    user = rng.choice(users)
                    items.append((user, f"{user} {numbered[user]}".encode()))
                    numbered[user] += 1
                stored = await store.append_many(items)
                for (user, payload), event in zip(items, stored, strict=True):
                    assert event.payload == payload
                    sent[user].append(payload)
                batches += 1
        finally:
            writing.clear()  # the readers end too
        return batches

    async def read(seed: int) -> int:
        rng = random.Random(seed)
        last_id: dict[str, str | None] = dict.fromkeys(users)
        last_n = dict.fromkeys(users, -1)
        reads = 0
        while writing.is_set() or reads < 50:
            user = rng.choice(users)
            if rng.random() < 0.05:  # from the start: every number from 0, once each
                whole = await store.read_after(user, None, limit=10**6)
                numbers = [int(e.payload.split()[1]) for e in whole.events]
                assert numbers == list(range(len(numbers)))
                assert not whole.reset
                assert len(numbers) > last_n[user]
            result = await store.read_after(user, last_id[user], limit=rng.choice([5, 50, 1000]))
            assert not result.reset
            for event in result.events:
                name, number = event.payload.decode().split()
                assert (name, int(number)) == (user, last_n[user] + 1)
                previous = last_id[user]
                assert previous is None or event_key(event.id) > event_key(previous)
                last_id[user], last_n[user] = event.id, int(number)
            # Pending counts the committed events: what was read, at most what was sent.
            pending = (await store.get_user(user)).pending
            assert last_n[user] + 1 <= pending <= numbered[user]
            if rng.random() < 0.05:
                for record in await store.list_users(limit=100):
                    n = record.user_id
                    assert last_n[n] + 1 <= record.pending <= numbered[n], n
            reads += 1
        return reads

    async def watch_folds() -> set[int]:
        seen: set[int] = set()
        while writing.is_set():
            seen.add(await asyncio.to_thread(folded_upto, path))
            await asyncio.sleep(0.05)
        return seen

    async with asyncio.timeout(30):
        readers = [asyncio.create_task(read(seed)) for seed in range(4)]
        batches, folds = await asyncio.gather(write(2.0), watch_folds())
        reads = await asyncio.gather(*readers)
    assert batches > 100
    assert len(folds) >= 3  # the folds ran while the readers read
    assert min(reads) >= 50
    for user in users:
        whole = await store.read_after(user, None, limit=10**6)
        assert payloads_of(whole) == sent[user]
        assert not whole.reset
    await until(lambda: indexed_rows(path) == events_rows(path))


# -- older and newer files ------------------------------------------------------------------

SCHEMA_2 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX events_by_user ON events (user_id, id);
CREATE TABLE trimmed (user_id TEXT PRIMARY KEY, dropped_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    connections INTEGER NOT NULL,
    last_seen REAL NOT NULL,
    cursor TEXT,
    cursor_n INTEGER
) WITHOUT ROWID;
CREATE TABLE sessions (
    user_id TEXT NOT NULL,
    from_id INTEGER NOT NULL,
    to_id INTEGER,
    PRIMARY KEY (user_id, from_id)
) WITHOUT ROWID;
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL,
    due REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX webhooks_by_due ON webhooks (due);
PRAGMA user_version=2;
"""


async def test_a_file_of_schema_2_is_upgraded_and_its_rows_still_replay(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(SCHEMA_2)
        # bob's first event (id 1) was dropped by retention; alice watched from id 2 to 5.
        written = [
            ("bob", b"data: dropped\n"),
            ("alice", b"data: a1\n"),
            ("bob", b"data: b1\n"),
            ("", b"data: all\n"),
            ("alice", b"data: a2\n"),
            ("bob", b"data: b2\n"),
            ("", b"data: not hers\n"),
        ]
        conn.executemany(
            "INSERT INTO events (user_id, created, payload) VALUES (?, 1e10, ?)", written
        )
        conn.executescript(
            "DELETE FROM events WHERE id = 1;"
            "INSERT INTO trimmed VALUES ('bob', 1);"
            "INSERT INTO sessions VALUES ('alice', 2, 5);"
            "INSERT INTO users VALUES ('alice', 0, 1e9, '2', 2);"
        )
        conn.commit()
    store = await open_sqlite(path, index_interval=FOREVER)
    alice = await store.read_after("alice", None, limit=10)
    assert [(e.id, e.payload) for e in alice.events] == [
        ("2", b"data: a1\n"),
        ("4", b"data: all\n"),
        ("5", b"data: a2\n"),
    ]
    assert payloads_of(await store.read_after("alice", "2", limit=10)) == [
        b"data: all\n",
        b"data: a2\n",
    ]
    assert payloads_of(await store.read_after("alice", "4", limit=1)) == [b"data: a2\n"]
    bob = await store.read_after("bob", None, limit=10)
    assert [(e.id, e.payload) for e in bob.events] == [("3", b"data: b1\n"), ("6", b"data: b2\n")]
    assert await store.read_after("bob", "1", limit=10) == ReadResult(bob.events)
    assert (await store.read_after("bob", "0", limit=10)).reset
    assert (await store.get_user("alice")).pending == 2
    assert (await store.get_user("bob")).pending == 2
    assert rows(path, "PRAGMA user_version") == [(3,)]
    indexes = {name for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type='index'")}
    assert "events_by_user" not in indexes
    assert indexed_rows(path) == events_rows(path)
    assert folded_upto(path) == 7
    new = await store.append_many([("alice", b"data: a3\n"), ("bob", b"data: b3\n")])
    assert [event.id for event in new] == ["8", "9"]
    assert payloads_of(await store.read_after("alice", "5", limit=10)) == [b"data: a3\n"]
    assert payloads_of(await store.read_after("bob", "3", limit=10)) == [
        b"data: b2\n",
        b"data: b3\n",
    ]


async def test_a_file_of_the_first_schema_is_upgraded_to_the_third(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
            " created REAL NOT NULL, payload BLOB NOT NULL);"
            "CREATE INDEX events_by_user ON events (user_id, id);"
            "INSERT INTO events (user_id, created, payload) VALUES"
            " ('alice', 1e10, x'61'), ('bob', 1e10, x'62'), ('alice', 1e10, x'63');"
            "PRAGMA user_version=1;"
        )
    store = await open_sqlite(path, index_interval=FOREVER)
    assert payloads_of(await store.read_after("alice", None, limit=10)) == [b"a", b"c"]
    assert payloads_of(await store.read_after("alice", "1", limit=10)) == [b"c"]
    assert rows(path, "PRAGMA user_version") == [(3,)]
    assert indexed_rows(path) == events_rows(path)


async def test_a_file_of_schema_4_is_refused(open_sqlite: Opener, tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version=4")
    with pytest.raises(ConfigurationError, match="newer"):
        await open_sqlite(path)


async def test_a_folds_slice_is_never_committed_with_appends(
    open_sqlite: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slice costs about a millisecond of the writer's CPU; committed with appends, it
    # would delay their delivery. Every statement of the writer's connection is traced.
    statements = trace(monkeypatch, _sqlite_writer.Writer)
    store = await open_sqlite(index_interval=0.02)
    users = [f"user-{n}" for n in range(3 * SLICE_USERS)]  # folds of three slices or more
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # appends keep coming while folds go on
        await store.append_many([(user, b"data: x\n") for user in random.sample(users, 20)])
    taken = transactions(statements)
    appends = [t for t in taken if any(s.startswith("INSERT INTO events") for s in t)]
    folds = [t for t in taken if any("INTO user_events" in s for s in t)]
    assert len(appends) > 20
    assert len(folds) > 3
    assert not [t for t in appends if t in folds]
