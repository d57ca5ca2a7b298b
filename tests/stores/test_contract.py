"""The store contract, proved the same way for every store (memory, SQLite, Redis)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from ssehub.events import event_key
from ssehub.stores import ReadResult, Retention, Store, UserState
from ssehub.stores.redis_cluster import RedisClusterStore
from tests.stores.conftest import RecordingListener, StoreFactory, later_than_any

pytestmark = pytest.mark.anyio


def keys(ids: list[str]) -> list[tuple[int, int]]:
    return [event_key(event_id) for event_id in ids]


def strictly_increasing(ids: list[str]) -> bool:
    order = keys(ids)
    return all(a < b for a, b in itertools.pairwise(order))


async def test_appended_events_come_back_in_order_with_increasing_ids(store: Store) -> None:
    stored = [await store.append("alice", f"data: {i}\n".encode()) for i in range(5)]
    assert strictly_increasing([event.id for event in stored])
    result = await store.read_after("alice", None, limit=100)
    assert result.events == stored
    assert not result.reset


async def test_append_many_keeps_the_order_of_its_items_across_users(store: Store) -> None:
    items = [("alice", b"data: a1\n"), ("bob", b"data: b1\n"), ("alice", b"data: a2\n")]
    stored = await store.append_many(items)
    assert [event.payload for event in stored] == [payload for _, payload in items]
    alice = (await store.read_after("alice", None, limit=10)).events
    bob = (await store.read_after("bob", None, limit=10)).events
    assert alice == [stored[0], stored[2]]
    assert bob == [stored[1]]
    assert strictly_increasing([event.id for event in alice])


async def test_append_many_of_nothing_stores_nothing(store: Store) -> None:
    assert await store.append_many([]) == []


async def test_read_after_an_id_returns_only_the_later_events(store: Store) -> None:
    stored = await store.append_many([("alice", f"data: {i}\n".encode()) for i in range(6)])
    result = await store.read_after("alice", stored[2].id, limit=100)
    assert result.events == stored[3:]
    assert not result.reset
    newest = await store.read_after("alice", stored[-1].id, limit=100)
    assert newest.events == []
    assert not newest.reset


async def test_read_after_returns_at_most_limit_events_and_pages_on(store: Store) -> None:
    stored = await store.append_many([("alice", f"data: {i}\n".encode()) for i in range(7)])
    first = await store.read_after("alice", None, limit=3)
    second = await store.read_after("alice", first.events[-1].id, limit=3)
    third = await store.read_after("alice", second.events[-1].id, limit=3)
    assert first.events + second.events + third.events == stored
    assert [len(page.events) for page in (first, second, third)] == [3, 3, 1]


async def test_a_user_without_events_reads_empty_and_any_id_of_theirs_is_a_reset(
    store: Store,
) -> None:
    other = await store.append("bob", b"data: for bob\n")
    assert await store.read_after("alice", None, limit=10) == ReadResult([], reset=False)
    result = await store.read_after("alice", other.id, limit=10)
    assert result.events == []
    assert result.reset


async def test_an_id_older_than_what_is_kept_by_count_sets_reset(make_store: StoreFactory) -> None:
    store = await make_store(retention=Retention(max_events=3))
    stored = await store.append_many([("alice", f"data: {i}\n".encode()) for i in range(6)])
    kept = await store.read_after("alice", None, limit=100)
    assert kept.events == stored[3:]
    assert not kept.reset
    trimmed = await store.read_after("alice", stored[0].id, limit=100)
    assert trimmed.events == stored[3:]
    assert trimmed.reset
    # Nothing after the newest dropped event was lost: a reader there missed nothing.
    exact = await store.read_after("alice", stored[2].id, limit=100)
    assert exact.events == stored[3:]
    assert not exact.reset


async def test_retention_by_count_also_applies_to_events_appended_one_by_one(
    make_store: StoreFactory,
) -> None:
    store = await make_store(retention=Retention(max_events=2))
    stored = [await store.append("alice", f"data: {i}\n".encode()) for i in range(5)]
    assert (await store.read_after("alice", None, limit=100)).events == stored[3:]
    assert (await store.read_after("alice", stored[1].id, limit=100)).reset


async def test_an_id_in_the_future_sets_reset_and_returns_everything_kept(store: Store) -> None:
    stored = await store.append_many([("alice", f"data: {i}\n".encode()) for i in range(3)])
    result = await store.read_after("alice", later_than_any(stored[-1].id), limit=100)
    assert result.events == stored
    assert result.reset


async def test_retention_by_age_drops_events_older_than_max_age(make_store: StoreFactory) -> None:
    store = await make_store(retention=Retention(max_events=100, max_age=0.3))
    old = await store.append_many([("alice", b"data: old 1\n"), ("alice", b"data: old 2\n")])
    await asyncio.sleep(0.45)  # the passing of time is what is tested here
    fresh = await store.append("alice", b"data: fresh\n")
    kept = await store.read_after("alice", None, limit=100)
    assert kept.events == [fresh]
    assert (await store.read_after("alice", old[0].id, limit=100)).reset
    after_last_dropped = await store.read_after("alice", old[1].id, limit=100)
    assert after_last_dropped.events == [fresh]
    assert not after_last_dropped.reset


async def test_a_user_who_never_connected_is_unknown_with_every_kept_event_pending(
    store: Store,
) -> None:
    await store.append_many([("alice", b"data: 1\n"), ("alice", b"data: 2\n")])
    record = await store.get_user("alice")
    assert not record.known
    assert record.state is UserState.UNKNOWN
    assert (record.connections, record.cursor, record.pending) == (0, None, 2)
    nobody = await store.get_user("nobody")
    assert (nobody.state, nobody.pending, nobody.last_seen) == (UserState.UNKNOWN, 0, None)


async def test_the_offline_queue_counts_events_after_the_delivery_cursor(store: Store) -> None:
    stored = await store.append_many([("alice", f"data: {i}\n".encode()) for i in range(4)])
    await store.set_presence("alice", connections=1)
    online = await store.get_user("alice")
    assert (online.state, online.connections, online.pending) == (UserState.CONNECTED, 1, 0)

    await store.set_presence("alice", connections=0, cursor=stored[1].id)
    away = await store.get_user("alice")
    assert away.state is UserState.DISCONNECTED
    assert (away.cursor, away.pending) == (stored[1].id, 2)

    await store.append("alice", b"data: while away\n")
    await store.set_presence("alice", connections=0)  # no cursor: the old one stays
    later = await store.get_user("alice")
    assert (later.cursor, later.pending) == (stored[1].id, 3)
    queued = await store.read_after("alice", later.cursor, limit=100)
    assert [event.payload for event in queued.events] == [
        b"data: 2\n",
        b"data: 3\n",
        b"data: while away\n",
    ]


async def test_presence_records_when_the_user_was_last_seen(store: Store) -> None:
    before = time.time()
    await store.set_presence("alice", connections=2)
    await store.refresh_presence(["alice"])
    connected = await store.get_user("alice")
    assert connected.known
    assert connected.connections == 2
    assert connected.last_seen is not None
    assert before - 1 <= connected.last_seen <= time.time() + 1
    await store.set_presence("alice", connections=0)
    gone = await store.get_user("alice")
    assert gone.state is UserState.DISCONNECTED
    assert gone.last_seen is not None
    assert gone.last_seen >= connected.last_seen - 1


async def test_list_users_pages_through_known_users_in_id_order_by_state(store: Store) -> None:
    for user_id, connections in [("carol", 1), ("alice", 0), ("dave", 0), ("bob", 1)]:
        await store.set_presence(user_id, connections=connections)
    await store.append("eve", b"data: never connected\n")
    everyone = await store.list_users()
    assert [record.user_id for record in everyone] == ["alice", "bob", "carol", "dave"]
    first = await store.list_users(limit=2)
    rest = await store.list_users(after=first[-1].user_id, limit=10)
    assert [record.user_id for record in first + rest] == ["alice", "bob", "carol", "dave"]
    connected = await store.list_users(state=UserState.CONNECTED)
    assert [record.user_id for record in connected] == ["bob", "carol"]
    away = await store.list_users(state=UserState.DISCONNECTED, after="alice")
    assert [record.user_id for record in away] == ["dave"]
    assert await store.list_users(state=UserState.UNKNOWN) == []


async def test_the_listener_hears_every_append_of_a_watched_user_in_id_order(
    store: Store, listener: RecordingListener
) -> None:
    await store.watch("alice")
    await store.watch("bob")
    stored = await store.append_many(
        [("alice", b"data: a1\n"), ("bob", b"data: b1\n"), ("alice", b"data: a2\n")]
    )
    stored.append(await store.append("alice", b"data: a3\n"))
    await listener.wait_until(lambda: len(listener.events) >= 4)
    assert listener.ids_of("alice") == [stored[0].id, stored[2].id, stored[3].id]
    assert listener.ids_of("bob") == [stored[1].id]
    assert [event for user, event in listener.events if user == "bob"] == [stored[1]]


async def test_append_to_all_gives_each_user_the_payload_once_after_their_own_events(
    store: Store, listener: RecordingListener
) -> None:
    for user in ("alice", "bob", "carol"):
        await store.watch(user)
    before = await store.append_many([("alice", b"data: a1\n"), ("bob", b"data: b1\n")])
    assert await store.append_to_all(["alice", "bob", "carol"], b"data: all\n") == 3
    after = await store.append("alice", b"data: a2\n")
    alice = (await store.read_after("alice", None, limit=10)).events
    assert [event.payload for event in alice] == [b"data: a1\n", b"data: all\n", b"data: a2\n"]
    assert strictly_increasing([event.id for event in alice])
    assert alice[0] == before[0]
    assert alice[-1] == after
    bob = (await store.read_after("bob", before[1].id, limit=10)).events
    assert [event.payload for event in bob] == [b"data: all\n"]
    carol = (await store.read_after("carol", None, limit=10)).events
    assert [event.payload for event in carol] == [b"data: all\n"]
    await listener.wait_until(lambda: len(listener.events) >= 6)
    heard = [(user, event.payload) for user, event in listener.events]
    assert sorted(heard) == sorted(
        [("alice", b"data: a1\n"), ("bob", b"data: b1\n"), ("alice", b"data: all\n"),
         ("bob", b"data: all\n"), ("carol", b"data: all\n"), ("alice", b"data: a2\n")]
    )  # fmt: skip
    assert listener.ids_of("alice") == [event.id for event in alice]


async def test_a_long_run_of_appends_keeps_exactly_the_newest_by_count(
    make_store: StoreFactory,
) -> None:
    store = await make_store(retention=Retention(max_events=5))
    stored = [await store.append("alice", f"data: {i}\n".encode()) for i in range(300)]
    kept = await store.read_after("alice", None, limit=100)
    assert kept.events == stored[-5:]
    assert not (await store.read_after("alice", stored[-6].id, limit=100)).reset
    assert (await store.read_after("alice", stored[-7].id, limit=100)).reset
    assert (await store.read_after("alice", stored[-3].id, limit=100)).events == stored[-2:]
    assert (await store.get_user("alice")).pending <= 5


async def test_concurrent_appends_for_one_user_lose_nothing_and_stay_in_id_order(
    store: Store, listener: RecordingListener
) -> None:
    await store.watch("alice")

    async def sender(task: int) -> list[str]:
        ids = []
        for i in range(25):
            event = await store.append("alice", f"data: {task}-{i}\n".encode())
            ids.append(event.id)
        return ids

    per_task = await asyncio.gather(*(sender(task) for task in range(20)))
    for ids in per_task:
        assert strictly_increasing(ids)  # one task's appends keep their order
    every_id = [event_id for ids in per_task for event_id in ids]
    assert len(set(every_id)) == 500
    await listener.wait_until(lambda: len(listener.ids_of("alice")) >= 500)
    heard = listener.ids_of("alice")
    assert len(heard) == 500
    assert strictly_increasing(heard)
    assert set(heard) == set(every_id)
    kept = await store.read_after("alice", None, limit=1000)
    assert [event.id for event in kept.events] == heard


async def test_broadcasts_and_disconnects_reach_the_listener(
    store: Store, listener: RecordingListener
) -> None:
    await store.publish_broadcast(b"data: to everyone\n")
    await store.publish_disconnect("alice")
    await listener.wait_until(lambda: bool(listener.broadcasts and listener.disconnects))
    assert listener.broadcasts == [b"data: to everyone\n"]
    assert listener.disconnects == ["alice"]


async def test_a_running_store_answers_ping(store: Store) -> None:
    await store.ping()


async def test_payloads_come_back_byte_for_byte(store: Store) -> None:
    payload = "event: note\ndata: héllo \u2603\ndata: \x00?\n".encode()
    stored = await store.append("alice", payload)
    assert stored.payload == payload
    assert (await store.read_after("alice", None, limit=1)).events == [stored]


async def test_a_broadcast_reaches_the_listener_as_one_event_shared_by_its_users(
    store: Store, listener: RecordingListener
) -> None:
    # The frame of a broadcast is built once for every user who gets the shared id.
    users = [f"user{n:03}" for n in range(300)]
    for user in users:
        await store.watch(user)
    await store.append_many([(user, b"data: own\n") for user in users[::7]])
    assert await store.append_to_all(users, b"data: all\n") == len(users)
    await listener.wait_until(
        lambda: sum(event.payload == b"data: all\n" for _, event in listener.events) == 300
    )
    heard = [event for _, event in listener.events if event.payload == b"data: all\n"]
    if not isinstance(store, RedisClusterStore):  # there each user hears it on its channel
        assert len({id(event) for event in heard}) <= 3  # one per round trip of the store
    for user in users[::50]:
        replay = (await store.read_after(user, None, limit=10)).events
        assert replay[-1].payload == b"data: all\n"
        assert listener.ids_of(user) == [event.id for event in replay]
