"""Streams opening at once on the Redis store: one script call for all of them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from ssehub.stores.redis import Call, RedisStore
from tests.redis_server import forget_prefix, store_url
from tests.stores.conftest import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

USERS = ["plain", "ünïcødé", "a b", "x}y", "{z}", "c:olon", "\U0001f600", ""]


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    prefix = f"opens{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(store_url(prefix))
    store.bind(RecordingListener())
    await store.start()
    yield store
    await store.close()
    forget_prefix(prefix)


def counting(store: RedisStore) -> list[tuple[str, int]]:
    """Record each script call the store makes: (script, users in the call)."""
    calls: list[tuple[str, int]] = []
    scripted = store._scripted_each

    async def recorded(name: str, batch: Sequence[Call]) -> list[Any]:
        calls.extend((name, len(keys)) for keys, _ in batch)
        return await scripted(name, batch)

    store._scripted_each = recorded  # type: ignore[method-assign, assignment]
    return calls


async def test_the_newest_ids_of_users_watched_at_once_are_read_in_one_call(
    store: RedisStore,
) -> None:
    users = [u for u in USERS if u]
    for user in users[::2]:
        await store.append(user, b"data: old\n")
    calls = counting(store)
    await asyncio.gather(*(store.watch(user) for user in users))
    assert calls == [("NEWEST", len(users))]
    # The newest id read is where each subscription's duplicates end: what is
    # published from now on arrives, what was there before does not come again.
    listener = RecordingListener()
    store.bind(listener)
    fresh = [await store.append(user, b"data: new\n") for user in users]
    await listener.wait_until(lambda: len(listener.events) == len(users))
    assert sorted(e.id for _, e in listener.events) == sorted(e.id for e in fresh)


async def test_streams_opening_at_once_start_and_read_their_history_in_one_call(
    store: RedisStore,
) -> None:
    users = [u for u in USERS if u]
    history: dict[str, list[str]] = {}
    for number, user in enumerate(users):
        appended = [await store.append(user, b"data: %d\n" % n) for n in range(number % 3 + 2)]
        history[user] = [event.id for event in appended]
    # Half of the users have a cursor; the others start from the oldest kept event.
    cursors = {user: history[user][0] if n % 2 else None for n, user in enumerate(users)}
    await store.set_presence_many([(user, 0, cursor) for user, cursor in cursors.items()])
    for user in users[:4]:
        await store.watch(user)  # watched: the page after the start comes with it
    calls = counting(store)
    starts = await asyncio.gather(*(store.start_after(user) for user in users))
    assert calls == [("OPEN", len(users))]
    assert starts == [cursors[user] for user in users]
    for user, start in zip(users, starts, strict=True):
        page = await store.read_after(user, start, limit=100)
        wanted = history[user][1:] if start else history[user]
        assert [event.id for event in page.events] == wanted
    assert calls[1:] == [("READ", 1)] * (len(users) - 4)  # only the unwatched read again


async def test_an_empty_user_id_and_a_stream_with_nothing_yet_start_nowhere(
    store: RedisStore,
) -> None:
    starts = await asyncio.gather(store.start_after(""), store.start_after("nobody"))
    assert list(starts) == [None, None]
