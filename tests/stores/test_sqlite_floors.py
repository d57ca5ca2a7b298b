"""The SQLite store's retention by floors: a user's oldest events are dropped at once for
every read, and their rows leave the file with the writer's next fold.

Between the two, the rows are still in the file; every answer must be as if they were
gone, across a fold, a clean close, a kill -9 and a rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ssehub.events import StoredEvent
from ssehub.exceptions import StoreUnavailable
from ssehub.stores import ReadResult, Retention
from ssehub.stores.sqlite import SqliteStore
from tests.stores.conftest import Opener
from tests.stores.test_sqlite_user_events import (
    FOREVER,
    events_rows,
    folded_upto,
    ids_of,
    indexed_rows,
    rows,
    run_until_killed,
)

pytestmark = pytest.mark.anyio

KEEP = 3
RETENTION = Retention(max_events=KEEP)


async def assert_keeps_the_newest(
    store: SqliteStore, user_id: str, sent: list[StoredEvent]
) -> None:
    """``user_id`` reads as holding the newest `KEEP` of ``sent``, whatever the file holds."""
    kept = sent[-KEEP:]
    assert await store.read_after(user_id, None, limit=100) == ReadResult(kept)
    for k, event in enumerate(sent[:-1]):
        dropped = k < len(sent) - KEEP - 1  # the event before the oldest kept is no gap
        expected = ReadResult(kept if dropped else sent[k + 1 :], reset=dropped)
        assert await store.read_after(user_id, event.id, limit=100) == expected
    assert await store.read_after(user_id, sent[-KEEP].id, limit=1) == ReadResult(kept[1:2])
    assert (await store.get_user(user_id)).pending == KEEP
    listed = {record.user_id: record.pending for record in await store.list_users()}
    assert listed.get(user_id, KEEP) == KEEP


def floor_of(path: Path, user_id: str) -> int | None:
    found = rows(path, f"SELECT dropped_id FROM trimmed WHERE user_id = '{user_id}'")
    return int(str(found[0][0])) if found else None


async def until_file_holds(path: Path, user_id: str, count: int) -> None:
    async with asyncio.timeout(5):
        # A fold signals nothing outside: poll the file, bounded above.
        while len(ids_of(path, "events", user_id)) != count:
            await asyncio.sleep(0.01)


async def test_dropped_events_vanish_for_reads_at_once_and_from_the_file_with_the_fold(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite(retention=RETENTION, index_interval=0.05)
    await store.set_presence("alice", connections=0)  # listed, with a pending count
    bob = await store.append("bob", b"data: bob\n")
    sent = [await store.append("alice", f"data: {n}\n".encode()) for n in range(KEEP + 2)]
    await assert_keeps_the_newest(store, "alice", sent)
    sent += await store.append_many([("alice", f"data: {n}\n".encode()) for n in range(5, 12)])
    await assert_keeps_the_newest(store, "alice", sent)
    await until_file_holds(path, "alice", KEEP)
    await assert_keeps_the_newest(store, "alice", sent)
    assert ids_of(path, "events", "alice") == [int(event.id) for event in sent[-KEEP:]]
    async with asyncio.timeout(5):
        while ids_of(path, "user_events", "alice") != ids_of(path, "events", "alice"):
            await asyncio.sleep(0.01)
    assert floor_of(path, "alice") == int(sent[-KEEP - 1].id)
    assert await store.read_after("bob", None, limit=10) == ReadResult([bob])


async def test_a_clean_close_leaves_only_what_is_kept_in_the_file(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite(retention=RETENTION, index_interval=FOREVER)
    sent = [await store.append("alice", f"data: {n}\n".encode()) for n in range(10)]
    assert len(ids_of(path, "events", "alice")) == 10  # no fold ran: the rows are there
    await assert_keeps_the_newest(store, "alice", sent)
    await store.close()  # and folds: the next opening has nothing to fold or trim
    assert ids_of(path, "events", "alice") == [int(event.id) for event in sent[-KEEP:]]
    assert floor_of(path, "alice") == int(sent[-KEEP - 1].id)
    assert indexed_rows(path) == events_rows(path)
    assert folded_upto(path) == int(sent[-1].id)
    again = await open_sqlite(path, retention=RETENTION, index_interval=FOREVER)
    await assert_keeps_the_newest(again, "alice", sent)
    assert indexed_rows(path) == events_rows(path)


KILLED = """
import asyncio, os, signal, sys
from ssehub.stores import Retention
from ssehub.stores.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1], retention=Retention(max_events=3), index_interval=3600.0)
    await store.start()
    for n in range(5):  # folded before the kill
        await store.append("alice", b"data: %d\\n" % n)
    await store.close()
    store = SqliteStore(sys.argv[1], retention=Retention(max_events=3), index_interval=3600.0)
    await store.start()
    for n in range(5, 12):  # dropping five, in memory only
        await store.append("alice", b"data: %d\\n" % n)
    await store.append("bob", b"data: bob\\n")
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_floors_only_memory_held_before_a_kill_are_found_again_on_opening(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    await run_until_killed(KILLED, path)
    assert len(ids_of(path, "events", "alice")) == 10  # 3 kept, then 7 more
    store = await open_sqlite(path, retention=RETENTION, index_interval=FOREVER)
    found = await store.read_after("alice", None, limit=100)
    assert [event.payload for event in found.events] == [b"data: 9\n", b"data: 10\n", b"data: 11\n"]
    assert ids_of(path, "events", "alice") == [int(event.id) for event in found.events]
    oldest = int(found.events[0].id)
    assert floor_of(path, "alice") == oldest - 1
    assert (await store.read_after("alice", str(oldest - 2), limit=100)).reset
    assert [event.payload for event in (await store.read_after("bob", None, limit=10)).events] == [
        b"data: bob\n"
    ]


async def test_a_rolled_back_transaction_drops_nothing(open_sqlite: Opener, tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite(retention=RETENTION, index_interval=FOREVER)
    sent = [await store.append("alice", f"data: {n}\n".encode()) for n in range(KEEP)]
    writer = store._writer  # a failing statement stands in for a full or broken disk
    started, release = threading.Event(), threading.Event()

    def hold(cur: object) -> bool:
        started.set()
        return release.wait(10)

    held = writer.submit(hold)  # a transaction of its own, held open
    assert await asyncio.to_thread(started.wait, 10)
    lost = writer.append([("alice", b"data: lost 1\n"), ("alice", b"data: lost 2\n")])
    broken = writer.submit(lambda cur: cur.execute("INSERT INTO no_such_table VALUES (1)"))
    release.set()  # the append and the failure now share the next transaction
    await held
    for future in (lost, broken):
        with pytest.raises(StoreUnavailable):
            await future
    assert await store.read_after("alice", None, limit=100) == ReadResult(sent)
    assert (await store.get_user("alice")).pending == KEEP
    for n in range(KEEP, KEEP + 2):  # each drops one more, and only one
        sent.append(await store.append("alice", f"data: {n}\n".encode()))
        await assert_keeps_the_newest(store, "alice", sent)
    await store.close()
    assert ids_of(path, "events", "alice") == [int(event.id) for event in sent[-KEEP:]]
