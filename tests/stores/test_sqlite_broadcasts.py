"""The SQLite store keeps a broadcast once: one row, and sessions saying who had it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from ssehub import Hub
from ssehub.events import event_key
from ssehub.exceptions import ConfigurationError
from ssehub.stores import Retention
from ssehub.stores.sqlite import SqliteStore
from tests.stores.conftest import Opener, RecordingListener
from tests.test_hub import RecordingSink

pytestmark = pytest.mark.anyio


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    """What the file holds, read with a connection of its own."""
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


async def payloads(store: SqliteStore, user_id: str, after: str | None = None) -> list[bytes]:
    return [e.payload for e in (await store.read_after(user_id, after, limit=100)).events]


async def test_a_broadcast_to_many_watched_users_is_one_row_and_one_event_for_all(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    listener = RecordingListener()
    store = await open_sqlite(listener=listener)
    users = [f"u{n}" for n in range(200)]
    for user in users:
        await store.watch(user)
    assert await store.append_to_all(users, b"data: all\n") == 200
    await listener.wait_until(lambda: len(listener.events) >= 200)
    assert rows(tmp_path / "hub.db", "SELECT user_id, payload FROM events") == [
        ("", b"data: all\n")
    ]
    heard = {id(event) for _, event in listener.events}
    assert len(heard) == 1  # the same event, so the same frame, for every user
    assert sorted(user for user, _ in listener.events) == sorted(users)
    for user in ("u0", "u199"):
        assert await payloads(store, user) == [b"data: all\n"]


async def test_the_hub_writes_a_broadcast_to_more_users_than_a_chunk_as_one_row(
    tmp_path: Path,
) -> None:
    hub = Hub(SqliteStore(tmp_path / "hub.db"))
    sinks = [RecordingSink() for _ in range(1500)]  # more than the hub's chunk of 1,000
    async with hub.running():
        for n, sink in enumerate(sinks):
            await hub.open(f"u{n}", sink)
        await hub.broadcast("to all")
        async with asyncio.timeout(10):
            while not all(sink.datas() for sink in sinks):
                await asyncio.sleep(0.01)
    assert len({id(sink.datas()[0]) for sink in sinks}) == 1  # one frame for all
    query = "SELECT user_id FROM events WHERE user_id NOT LIKE '\x1f%'"  # not presence
    assert rows(tmp_path / "hub.db", query) == [("",)]


async def test_a_reconnect_after_an_older_id_gets_the_broadcast_once_in_id_order(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite()
    await store.watch("alice")
    first = await store.append("alice", b"data: a1\n")
    await store.append_to_all(["alice", "bob"], b"data: all-1\n")
    await store.append("alice", b"data: a2\n")
    await store.append_to_all(["alice"], b"data: all-2\n")
    await store.unwatch("alice")
    await store.append_to_all(["bob"], b"data: after she left\n")
    expected = [b"data: all-1\n", b"data: a2\n", b"data: all-2\n"]
    assert await payloads(store, "alice", first.id) == expected
    replay = (await store.read_after("alice", None, limit=100)).events
    assert [e.payload for e in replay] == [b"data: a1\n", *expected]
    ids = [e.id for e in replay]
    assert ids == sorted(ids, key=event_key)
    # The limit counts both kinds, and reading on from the last id read misses nothing.
    page = (await store.read_after("alice", None, limit=2)).events
    assert [e.payload for e in page] == [b"data: a1\n", b"data: all-1\n"]
    assert await payloads(store, "alice", page[-1].id) == expected[1:]
    assert not (await store.read_after("alice", replay[1].id, limit=100)).reset


async def test_a_user_not_listed_or_watching_later_never_gets_the_broadcast(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    listener = RecordingListener()
    store = await open_sqlite(listener=listener)
    await store.watch("alice")
    await store.watch("carol")  # connected, but the broadcast was accepted before
    before = await store.append("dave", b"data: d\n")
    await store.append_to_all(["alice"], b"data: all\n")
    await store.watch("dave")  # connects after the broadcast
    await store.append_to_all(["alice", "dave"], b"data: second\n")
    await listener.wait_until(lambda: len(listener.events) >= 4)
    assert listener.ids_of("carol") == []
    assert await payloads(store, "carol") == []
    assert await payloads(store, "dave", before.id) == [b"data: second\n"]
    assert await payloads(store, "alice") == [b"data: all\n", b"data: second\n"]
    await store.unwatch("carol")
    await store.close()
    sessions = rows(tmp_path / "hub.db", "SELECT user_id FROM sessions ORDER BY user_id")
    assert sessions == [("alice",), ("dave",)]  # carol's session had no broadcast in it


async def test_a_listed_user_whose_streams_closed_meanwhile_gets_a_row_of_their_own(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    store = await open_sqlite()
    await store.watch("alice")
    await store.unwatch("alice")  # between the broadcast's acceptance and its write
    assert await store.append_to_all(["alice", "bob"], b"data: all\n") == 2
    assert await payloads(store, "alice") == [b"data: all\n"]
    assert await payloads(store, "bob") == [b"data: all\n"]
    users = rows(tmp_path / "hub.db", "SELECT user_id FROM events ORDER BY id")
    assert users == [("",), ("alice",), ("bob",)]


async def test_streams_that_open_and_close_between_broadcasts_write_no_session(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    store = await open_sqlite()
    for n in range(50):
        await store.watch(f"u{n}")
        await store.set_presence(f"u{n}", connections=1)
    for n in range(50):
        await store.unwatch(f"u{n}")
    await store.close()
    assert rows(tmp_path / "hub.db", "SELECT count(*) FROM sessions") == [(0,)]


async def test_broadcasts_stay_replayable_after_a_restart_and_open_sessions_end_there(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    store = await open_sqlite()
    await store.watch("alice")
    seen = await store.append("alice", b"data: a\n")
    await store.append_to_all(["alice"], b"data: all\n")
    # Not closed: as after kill -9, the session is left open in the file.
    store._closed = True
    await store._writer.stop()
    await store._readers.stop()
    store._release_lock()

    again = await open_sqlite(path)
    assert await payloads(again, "alice", seen.id) == [b"data: all\n"]
    assert rows(path, "SELECT to_id IS NULL FROM sessions") == [(0,)]
    await again.watch("bob")
    await again.append_to_all(["bob"], b"data: after the restart\n")
    assert await payloads(again, "alice", seen.id) == [b"data: all\n"]  # she was gone
    assert await payloads(again, "bob") == [b"data: after the restart\n"]


async def test_broadcasts_are_trimmed_by_count_and_a_reader_that_missed_one_is_reset(
    open_sqlite: Opener,
) -> None:
    store = await open_sqlite(retention=Retention(max_events=3))
    await store.watch("alice")
    sent = [await store.append_to_all(["alice"], f"data: {n}\n".encode()) for n in range(5)]
    assert sent == [1] * 5
    own = await store.append("alice", b"data: mine\n")
    kept = (await store.read_after("alice", None, limit=100)).events
    assert [e.payload for e in kept] == [b"data: 2\n", b"data: 3\n", b"data: 4\n", own.payload]
    assert not (await store.read_after("alice", str(int(kept[0].id) - 1), limit=100)).reset
    assert (await store.read_after("alice", str(int(kept[0].id) - 2), limit=100)).reset
    # A user whose session began after the dropped broadcasts is not reset.
    await store.watch("bob")
    late = await store.append_to_all(["alice", "bob"], b"data: 5\n")
    assert late == 2
    bob = (await store.read_after("bob", "1", limit=100)).events
    assert [e.payload for e in bob] == [b"data: 5\n"]
    assert not (await store.read_after("bob", "1", limit=100)).reset


async def test_the_sweep_drops_old_broadcasts_and_their_sessions_and_keeps_the_reset(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    store = await open_sqlite(retention=Retention(max_age=0.2))
    await store.set_presence("alice", connections=1)
    await store.watch("alice")
    before = await store.append("alice", b"data: a\n")
    await store.append_to_all(["alice"], b"data: old\n")
    await store.unwatch("alice")
    await asyncio.sleep(0.3)  # the passing of time is what is tested here
    assert await store.sweep() == 2
    assert rows(tmp_path / "hub.db", "SELECT count(*) FROM sessions") == [(0,)]
    assert (await store.read_after("alice", before.id, limit=10)).reset
    assert await payloads(store, "alice") == []


async def test_pending_counts_the_broadcasts_after_the_cursor(open_sqlite: Opener) -> None:
    store = await open_sqlite()
    await store.watch("alice")
    await store.set_presence("alice", connections=1)
    first = await store.append("alice", b"data: a\n")
    await store.append_to_all(["alice"], b"data: all\n")
    await store.append("alice", b"data: b\n")
    await store.unwatch("alice")
    await store.set_presence("alice", connections=0, cursor=first.id)
    assert (await store.get_user("alice")).pending == 2
    (listed,) = await store.list_users()
    assert listed.pending == 2


async def test_a_file_of_the_first_schema_is_upgraded_and_its_rows_still_replay(
    open_sqlite: Opener, tmp_path: Path
) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as conn:  # as the first schema wrote a broadcast: a row each
        conn.executescript(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
            " created REAL NOT NULL, payload BLOB NOT NULL);"
            "CREATE INDEX events_by_user ON events (user_id, id);"
            "INSERT INTO events (user_id, created, payload) VALUES"
            " ('alice', 1e10, x'646174613a206f6c640a'), ('bob', 1e10, x'646174613a206f6c640a');"
            "PRAGMA user_version=1;"
        )
    store = await open_sqlite(path)
    assert await payloads(store, "alice") == [b"data: old\n"]
    await store.watch("alice")
    await store.append_to_all(["alice"], b"data: new\n")
    assert await payloads(store, "alice", "1") == [b"data: new\n"]
    assert rows(path, "PRAGMA user_version") == [(3,)]


async def test_a_file_of_a_newer_schema_is_refused(open_sqlite: Opener, tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=4")
    with pytest.raises(ConfigurationError, match="newer"):
        await open_sqlite(path)
