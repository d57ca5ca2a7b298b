"""What only the SQLite store promises: its URL, its file, restarts and the sweep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ssehub.events import event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import ReadResult, Retention, UserState, open_store
from ssehub.stores._sqlite_checkpoint import NICENESS
from ssehub.stores._sqlite_readers import ReadCursor
from ssehub.stores.sqlite import SqliteStore
from tests.stores.conftest import Opener, RecordingListener

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "path", "synchronous"),
    [
        ("sqlite:///data/ssehub.db", Path("data/ssehub.db"), "normal"),
        ("sqlite:////var/lib/hub.db", Path("/var/lib/hub.db"), "normal"),
        ("sqlite:///hub.db?synchronous=full", Path("hub.db"), "full"),
        ("SQLITE:///my%20hub.db?synchronous=OFF", Path("my hub.db"), "off"),
    ],
)
def test_a_sqlite_url_names_the_file_and_its_durability(
    url: str, path: Path, synchronous: str
) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert (store.path, store.synchronous, store.shared) == (path, synchronous, False)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/hub.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///data/",
        "sqlite:///:memory:",
        "sqlite:///hub.db?synchronous=sometimes",
        "sqlite:///hub.db?journal=delete",
        "sqlite:///hub.db#frag",
    ],
)
def test_a_bad_sqlite_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


async def test_starting_creates_the_folder_and_a_wal_mode_database(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "deep" / "er" / "hub.db"
    store = await open_sqlite(path)
    await store.append("alice", b"data: hi\n")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_second_store_on_the_same_file_is_refused(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    await open_sqlite()
    with pytest.raises(ConfigurationError, match="in use by another process"):
        await open_sqlite()


async def test_a_file_that_is_not_a_database_makes_start_fail_as_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    store = SqliteStore(path)
    with pytest.raises(StoreUnavailable, match="cannot open"):
        await store.start()
    # The lock went with the failed start: a good file can be opened right after.
    path.unlink()
    await store.start()
    await store.close()


async def test_a_closed_store_refuses_appends_as_unavailable(open_sqlite: Opener) -> None:
    store = await open_sqlite()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append("alice", b"data: late\n")
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_events_ids_and_presence_survive_a_reopen(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    first = await open_sqlite()
    kept = await first.append_many([("alice", b"data: 1\n"), ("alice", b"data: 2\n")])
    await first.set_presence("alice", connections=1, cursor=kept[0].id)
    await first.close()

    second = await open_sqlite()
    assert (await second.read_after("alice", None, limit=10)).events == kept
    newer = await second.append("alice", b"data: 3\n")
    assert event_key(newer.id) > event_key(kept[-1].id)
    record = await second.get_user("alice")
    # Streams recorded as open died with the process that owned the file.
    assert (record.known, record.connections, record.cursor) == (True, 0, kept[0].id)
    assert record.pending == 2


async def test_ids_are_never_reused_after_the_newest_events_are_dropped(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite(retention=Retention(max_events=1))
    first = await store.append("alice", b"data: 1\n")
    second = await store.append("alice", b"data: 2\n")
    assert event_key(second.id) > event_key(first.id)
    assert (await store.read_after("alice", first.id, limit=10)).events == [second]


async def test_ids_beyond_any_rowid_read_as_a_reset_not_an_error(open_sqlite: Opener) -> None:
    store = await open_sqlite()
    kept = await store.append("alice", b"data: 1\n")
    huge = "9" * 20
    assert await store.read_after("alice", huge, limit=10) == ReadResult([kept], reset=True)
    await store.set_presence("alice", connections=0, cursor=f"{huge}-{huge}")
    assert (await store.get_user("alice")).pending == 0


async def test_sweep_drops_expired_events_and_remembers_what_it_dropped(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite(retention=Retention(max_age=0.2))
    await store.set_presence("alice", connections=0)
    old = await store.append_many([("alice", b"data: a\n"), ("bob", b"data: b\n")])
    await asyncio.sleep(0.3)  # the passing of time is what is tested here
    fresh = await store.append("carol", b"data: c\n")
    assert await store.sweep() == 2
    assert (await store.read_after("alice", None, limit=10)).events == []
    assert (await store.read_after("carol", None, limit=10)).events == [fresh]
    # A known user keeps the mark: reading after the newest dropped id misses nothing.
    assert not (await store.read_after("alice", old[0].id, limit=10)).reset
    # A user nobody knows, with nothing kept, is forgotten (as MemoryStore forgets).
    assert (await store.read_after("bob", old[1].id, limit=10)).reset
    assert await store.sweep() == 0


async def test_the_sweep_runs_on_its_own(open_sqlite: Opener) -> None:
    store = await open_sqlite(retention=Retention(max_age=0.1), sweep_interval=0.05)
    await store.append("alice", b"data: a\n")
    async with asyncio.timeout(5):
        # A background sweep signals nothing: poll its effect, bounded above.
        while (await store.get_user("alice")).pending:
            await asyncio.sleep(0.05)


async def test_the_file_stops_growing_under_a_steady_load_with_retention(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    # Dropped rows leave the file with the writer's next fold: fold often here.
    store = await open_sqlite(retention=Retention(max_events=20), index_interval=0.05)
    payload = b"data: " + b"x" * 500 + b"\n"

    async def load(rounds: int) -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "hub.db")) as conn:
            for _ in range(rounds):
                await store.append_many([(f"user-{n % 10}", payload) for n in range(200)])
                async with asyncio.timeout(5):
                    # A fold signals nothing outside: poll the file, bounded above.
                    while conn.execute("SELECT count(*) FROM events").fetchone()[0] > 200:
                        await asyncio.sleep(0.01)
            pages: int = conn.execute("PRAGMA page_count").fetchone()[0]
        return pages

    warm = await load(5)
    assert await load(20) <= warm + 4
    assert sum([(await store.get_user(f"user-{n}")).pending for n in range(10)]) == 200


async def test_many_tasks_appending_at_once_are_written_in_few_transactions(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite()
    stored = await asyncio.gather(*(store.append(f"u{n}", b"data: x\n") for n in range(300)))
    assert [event.id for event in stored] == [str(n) for n in range(1, 301)]


async def test_a_smaller_retention_after_a_reopen_trims_on_the_next_append(
    open_sqlite: Opener,
) -> None:
    first = await open_sqlite(retention=Retention(max_events=5))
    old = await first.append_many([("alice", f"data: {i}\n".encode()) for i in range(5)])
    await first.close()
    second = await open_sqlite(retention=Retention(max_events=2))
    new = await second.append("alice", b"data: new\n")
    kept = await second.read_after("alice", old[0].id, limit=10)
    assert kept == ReadResult([old[-1], new], reset=True)


async def test_a_failed_write_fails_its_batch_as_unavailable_and_the_writer_goes_on(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite()
    writer = store._writer  # a failing statement stands in for a full or broken disk
    broken = writer.submit(lambda cur: cur.execute("INSERT INTO no_such_table VALUES (1)"))
    with pytest.raises(StoreUnavailable, match="SQLite write failed"):
        await broken
    event = await store.append("alice", b"data: still fine\n")
    assert (await store.read_after("alice", None, limit=10)).events == [event]


async def test_a_failed_read_answers_unavailable_and_the_readers_go_on(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite(readers=1)
    event = await store.append("alice", b"data: hi\n")
    with pytest.raises(StoreUnavailable, match="SQLite read failed"):
        await store._read(lambda cur: cur.execute("SELECT * FROM no_such_table"))
    assert (await store.read_after("alice", None, limit=10)).events == [event]


async def test_presence_is_read_back_at_once_and_committed_by_close(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    first = await open_sqlite()
    events = await first.append_many([("alice", b"data: 1\n"), ("alice", b"data: 2\n")])
    for n in range(500):  # one at a time, as the hub writes them
        await first.set_presence(f"user-{n}", connections=1)
    await first.set_presence("alice", connections=1)
    await first.set_presence("alice", connections=0, cursor=events[0].id)
    await first.set_presence("alice", connections=0)  # no cursor: the one before stays
    alice = await first.get_user("alice")
    assert (alice.connections, alice.cursor, alice.pending) == (0, events[0].id, 1)
    assert (await first.get_user("user-7")).connections == 1
    assert len(await first.list_users(state=UserState.CONNECTED, limit=1000)) == 500
    await first.close()

    second = await open_sqlite()
    alice = await second.get_user("alice")
    assert (alice.known, alice.cursor, alice.pending) == (True, events[0].id, 1)
    assert len(await second.list_users(limit=1000)) == 501


async def test_opening_a_stream_reads_cursor_and_history_in_one_read_and_misses_no_commit(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite()
    old = await store.append_many([("alice", b"data: 1\n"), ("alice", b"data: 2\n")])
    await store.set_presence("alice", connections=0, cursor=old[0].id)
    reads = 0
    read = store._read

    async def counted(fn: Callable[[ReadCursor], Any]) -> Any:
        nonlocal reads
        reads += 1
        return await read(fn)

    store._read = counted  # type: ignore[method-assign]
    await store.watch("alice")  # what the hub does for a user's first stream
    cursor = (await store.get_user("alice")).cursor
    assert (await store.read_after("alice", cursor, limit=100)).events == old[1:]
    assert reads == 1

    await store.watch("alice")
    cursor = (await store.get_user("alice")).cursor
    newer = await store.append("alice", b"data: 3\n")  # committed after the read
    assert (await store.read_after("alice", cursor, limit=100)).events == [old[1], newer]
    assert reads == 3


@pytest.mark.parametrize("synchronous", ["full", "normal", "off"])
async def test_each_durability_writes_in_order_and_keeps_what_it_wrote_across_a_reopen(
    open_sqlite: Opener, synchronous: str
) -> None:
    store = await open_sqlite(synchronous=synchronous)
    listener = RecordingListener()
    store.bind(listener)
    batches = await asyncio.gather(
        *(
            store.append_many([("alice", f"data: {n}-{i}\n".encode()) for i in range(5)])
            for n in range(40)
        )
    )
    await store.set_presence("alice", connections=0, cursor=batches[0][-1].id)
    stored = sorted((event for batch in batches for event in batch), key=lambda e: event_key(e.id))
    assert listener.ids_of("alice") == [event.id for event in stored]
    await store.close()
    again = await open_sqlite(synchronous=synchronous)
    assert (await again.read_after("alice", None, limit=1000)).events == stored
    assert (await again.get_user("alice")).pending == 195


async def test_the_wal_starts_over_under_a_steady_load_of_appends(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    # Checkpoints run on their own thread; they must not fall behind a writer that
    # never stops, or the WAL would grow without end. SQLite changes the salt in the
    # WAL's header each time the WAL starts over from its beginning.
    store = await open_sqlite()
    wal = tmp_path / "hub.db-wal"
    payload = b"data: " + b"x" * 2000 + b"\n"

    def salt() -> bytes:
        with wal.open("rb") as file:
            return file.read(20)[16:20]

    await store.append("user-0", payload)
    first = salt()
    async with asyncio.timeout(60):
        for _ in range(1500):  # up to 300 MB: well past the 64 MB that forces a restart
            await store.append_many([(f"user-{n}", payload) for n in range(100)])
            if salt() != first:
                break
        else:
            pytest.fail(f"the WAL never started over; it is {wal.stat().st_size} bytes")


async def test_presence_that_fails_to_be_written_is_still_read_and_written_later(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    store = await open_sqlite()
    event = await store.append("alice", b"data: 1\n")
    other = sqlite3.connect(tmp_path / "hub.db")  # stands in for a disk that refuses
    other.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    other.commit()
    await store.set_presence("alice", connections=0, cursor=event.id)
    await store._presence.settle()  # the batch failed
    assert (await store.get_user("alice")).cursor == event.id
    other.execute("DROP TRIGGER refuse")
    other.commit()

    def written() -> bool:
        row = other.execute("SELECT cursor FROM users WHERE user_id = 'alice'").fetchone()
        return bool(row == (event.id,))

    async with asyncio.timeout(10):
        while not written():
            await asyncio.sleep(0.05)  # the retry runs a second after the failure
    other.close()


async def test_without_the_checkpoint_thread_the_writer_checkpoints_itself(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "hub.db")
    store._writer._checkpointer.path = tmp_path / "missing" / "hub.db"  # it cannot open
    await store.start()
    try:
        payload = b"data: " + b"x" * 2000 + b"\n"
        for _ in range(100):  # about 20 MB, five times SQLite's own checkpoint size
            await store.append_many([(f"user-{n}", payload) for n in range(100)])
        assert store._writer._checkpointer.failed
        assert (tmp_path / "hub.db-wal").stat().st_size < 8 * 2**20
    finally:
        await store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
async def test_the_checkpoint_thread_leaves_the_core_to_the_loop_and_the_writer(
    open_sqlite: Opener,
) -> None:
    await open_sqlite()
    (thread,) = [t for t in threading.enumerate() if t.name == "ssehub-sqlite-checkpoint"]
    assert thread.native_id is not None
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = next(t for t in threading.enumerate() if t.name == "ssehub-sqlite-writer")
    assert writer.native_id is not None
    assert os.getpriority(os.PRIO_PROCESS, writer.native_id) == mine  # only it yields
    assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == min(19, mine + NICENESS)


@pytest.mark.parametrize("kept", [3, 1_200])  # under and over what a stream's opening reads
async def test_the_pending_count_read_with_a_stream_opening_is_the_counted_one(
    open_sqlite: Opener, kept: int
) -> None:
    store = await open_sqlite(retention=Retention(max_events=5_000))
    await store.append_many([("newcomer", b"data: waiting\n")] * kept)
    await store.watch("alice")
    await store.set_presence("alice", connections=1)
    first = await store.append("alice", b"data: seen\n")
    await store.append_to_all(["alice"], b"data: shared\n")
    await store.append_many([("alice", b"data: later\n")] * kept)
    await store.unwatch("alice")
    await store.set_presence("alice", connections=0, cursor=first.id)
    for user, expected in (("newcomer", kept), ("alice", kept + 1)):
        counted = await store.get_user(user)  # no stream opening: counted in the file
        assert counted.pending == expected
        await store.watch(user)  # a stream opening: read with the history after the cursor
        assert await store.get_user(user) == counted
        await store.unwatch(user)
