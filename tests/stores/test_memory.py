"""The memory store's own promises, beyond the contract every store keeps."""

from __future__ import annotations

import gc

import pytest

from ssehub.stores import MemoryStore

pytestmark = pytest.mark.anyio


async def test_kept_events_and_presence_add_nothing_to_the_collectors_full_passes() -> None:
    # A full cyclic collection walks every tracked object while every stream waits:
    # a store holding many events must not hold them as tracked objects.
    store = MemoryStore()
    users = [f"user{n}" for n in range(100)]
    gc.collect()
    before = len(gc.get_objects())
    for round_ in range(100):
        await store.append_many([(user, b"data: %d\n" % round_) for user in users])
        await store.append_to_all(users, b"data: all\n")
    for user in users:
        await store.set_presence(user, connections=1, cursor=None)
    await store.refresh_presence(users)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 5 * len(users)  # a log and its lists per user, not 20,000 events
    replay = await store.read_after("user7", None, limit=1000)
    assert len(replay.events) == 200
    assert replay.events[-1].payload == b"data: all\n"
    assert (await store.get_user("user7")).connections == 1


async def test_appending_tracks_nothing_so_young_collections_stay_rare() -> None:
    # Young collections come every so many tracked objects left alive; an append that
    # leaves none behind makes none (events kept as tuples were tracked until the
    # collection that found them, one 20,000-object pass per 10,000 appends).
    store = MemoryStore()
    users = [f"user{n}" for n in range(100)]
    await store.append_many([(user, b"data: first\n") for user in users])  # the logs
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for round_ in range(50):
            await store.append_many([(user, b"data: %d\n" % round_) for user in users])
        left = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert left < 1_000  # not two per event (10,000)


async def test_ids_in_one_millisecond_past_the_packed_limit_go_on_in_order() -> None:
    store = MemoryStore()
    first = (await store.append_many([("u", b"data: a\n")]))[0]
    store._last_key = (first.key[0], (1 << 20) - 1)  # as if a million ids were given out
    second, third = await store.append_many([("u", b"data: b\n"), ("u", b"data: c\n")])
    assert first.key < second.key < third.key
    assert second.key == (first.key[0] + 1, 0)
    after_first = await store.read_after("u", first.id, limit=10)
    assert [e.id for e in after_first.events] == [second.id, third.id]
    assert not after_first.reset
    beyond = await store.read_after("u", f"{first.key[0]}-99999999", limit=10)
    assert [e.id for e in beyond.events] == [second.id, third.id]
