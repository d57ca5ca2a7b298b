"""How a stream's opening writes its user's count: at once, or through the writer task."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from ssehub import MemoryStore
from ssehub._store_presence import StorePresence
from ssehub.stores.base import PresenceChange
from ssehub.stores.redis import RedisStore
from ssehub.stores.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


class RecordingStore(MemoryStore):
    """A memory store that records each presence call (the changes it carried)."""

    def __init__(self, *, at_once: bool) -> None:
        super().__init__()
        self.presence_at_once = at_once
        self.calls: list[list[PresenceChange]] = []

    async def set_presence_many(self, changes: Sequence[PresenceChange]) -> None:
        self.calls.append(list(changes))
        await super().set_presence_many(changes)


def writer_of(store: RecordingStore) -> StorePresence:
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        tasks.append(asyncio.ensure_future(coro))

    return StorePresence(store, lambda user_id: 1, spawn)


async def test_a_store_that_writes_at_once_gets_the_count_from_the_opening_stream() -> None:
    store = RecordingStore(at_once=True)
    writer = writer_of(store)  # its writer task is never started
    writer.delivered["ann"] = "7-0"
    await asyncio.wait_for(writer.changed("ann"), 1.0)
    assert store.calls == [[("ann", 1, "7-0")]]
    assert (await store.get_user("ann")).connections == 1


async def test_a_store_with_round_trips_gets_the_counts_of_streams_opening_together() -> None:
    store = RecordingStore(at_once=False)
    writer = writer_of(store)
    opening = [asyncio.ensure_future(writer.changed(user)) for user in ("ann", "bob", "cy")]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in opening)  # waiting for the writer task
    worker = asyncio.ensure_future(writer.run())
    try:
        await asyncio.wait_for(asyncio.gather(*opening), 1.0)
    finally:
        worker.cancel()
    assert store.calls == [[("ann", 1, None), ("bob", 1, None), ("cy", 1, None)]]


def finishes_without_waiting(coro: Coroutine[Any, Any, None]) -> bool:
    """``coro`` ran to its end in one step: it never waited for anything."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_stores_that_say_they_answer_at_once_do(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "hub.db")
    await store.start()
    try:
        assert store.presence_at_once
        assert store.watch_at_once
        assert finishes_without_waiting(store.watch("ann"))
        assert finishes_without_waiting(store.set_presence_many([("ann", 1, None)]))
        assert (await store.get_user("ann")).connections == 1
    finally:
        await store.close()


def test_a_store_with_round_trips_does_not_say_so() -> None:
    assert not RedisStore.presence_at_once
    assert not RedisStore.watch_at_once
