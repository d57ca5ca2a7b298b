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
