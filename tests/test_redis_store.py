"""What the Redis store does beyond the shared contract: reconnection, presence expiry,
configuration. Each test runs on a Redis server of its own, which it may disrupt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from ssehub.events import event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import open_store
from ssehub.stores.base import UserState
from ssehub.stores.redis import RedisStore
from tests.redis_server import RedisServer, store_url
from tests.stores.conftest import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
async def stores(own_redis: RedisServer) -> AsyncIterator[list[RedisStore]]:
    """Stores to start in a test; closed afterwards."""
    opened: list[RedisStore] = []
    yield opened
    for store in opened:
        await store.close()


async def started(
    stores: list[RedisStore], url: str, listener: RecordingListener | None = None
) -> RedisStore:
    store = RedisStore.from_url(url)
    store.bind(listener or RecordingListener())
    await store.start()
    stores.append(store)
    return store


async def test_events_published_while_the_subscriber_reconnects_arrive_in_order(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    url = store_url("gap", base=own_redis.url)
    listener = RecordingListener()
    watcher = await started(stores, url, listener)
    sender = await started(stores, url)
    await watcher.watch("uma")
    first = await sender.append("uma", b"data: 0\n")
    await listener.wait_until(lambda: len(listener.ids_of("uma")) == 1)

    with redis.Redis.from_url(own_redis.url) as admin:
        assert admin.client_kill_filter(_type="pubsub") >= 1
    # Sent before the watcher has subscribed again: only the gap fill can bring them.
    gap = [e.id for e in await sender.append_many([("uma", b"data: %d\n" % i) for i in (1, 2)])]
    await listener.wait_until(lambda: len(listener.ids_of("uma")) == 3)
    live = await sender.append("uma", b"data: 3\n")
    await listener.wait_until(lambda: len(listener.ids_of("uma")) == 4)
    assert listener.ids_of("uma") == [first.id, *gap, live.id]
    assert [event_key(i) for i in listener.ids_of("uma")] == sorted(
        event_key(i) for i in listener.ids_of("uma")
    )


async def answering_again(store: RedisStore, timeout: float = 10.0) -> None:
    """Wait until the store answers again after Redis came back."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await store.ping()
                return
            except StoreUnavailable:
                await asyncio.sleep(0.05)


async def test_a_store_fails_fast_while_redis_is_down_and_recovers_when_it_returns(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    listener = RecordingListener()
    store = await started(
        stores, store_url("down", base=own_redis.url, reconnect_max=0.1), listener
    )
    await store.watch("vic")
    own_redis.stop()
    async with asyncio.timeout(3):
        for _ in range(40):  # more than the pool holds: failures give connections back
            with pytest.raises(StoreUnavailable):
                await store.append("vic", b"data: lost\n")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.watch("wes")
    own_redis.start()
    await answering_again(store)
    event = await store.append("vic", b"data: back\n")
    await listener.wait_until(lambda: listener.ids_of("vic") == [event.id])


async def test_a_nodes_presence_expires_without_refresh_and_heals_on_the_next_one(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    url = store_url("ttl", base=own_redis.url, presence_ttl=0.3)
    node = await started(stores, url)
    other = await started(stores, url)
    await node.set_presence("xia", connections=2)
    assert (await other.get_user("xia")).connections == 2
    async with asyncio.timeout(5):
        while (await other.get_user("xia")).state is not UserState.DISCONNECTED:
            await asyncio.sleep(0.05)
    await node.refresh_presence(["xia"])
    assert (await other.get_user("xia")).connections == 2
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.flushall()  # Redis lost its data: the next refresh writes presence again
    await node.refresh_presence(["xia"])
    record = await other.get_user("xia")
    assert (record.known, record.connections) == (True, 2)


@pytest.mark.parametrize(
    "query",
    [
        "prefix=",
        "prefix=a%20b",
        "presence_ttl=soon",
        "reconnect_max=0",
        "ping_interval=-1",
        "bogus=1",
    ],
)
def test_a_bad_redis_option_is_a_configuration_error(query: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(f"redis://127.0.0.1:6379/0?{query}")


def test_a_redis_url_builds_a_shared_store_with_its_prefix() -> None:
    store = open_store("redis://127.0.0.1:6379/0?prefix=app1&socket_timeout=1")
    assert isinstance(store, RedisStore)
    assert store.shared


async def test_listing_connected_users_finds_them_past_a_thousand_disconnected_ones(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    store = await started(stores, store_url("many", base=own_redis.url))
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.zadd("many:users", {f"a{i:05}": 0 for i in range(2500)})
    await store.set_presence("b-late", connections=1)
    await store.set_presence("a00007", connections=1)
    connected = await store.list_users(state=UserState.CONNECTED)
    assert [r.user_id for r in connected] == ["a00007", "b-late"]
    page = await store.list_users(after="a01998", limit=3)
    assert [r.user_id for r in page] == ["a01999", "a02000", "a02001"]


async def test_after_redis_restarts_empty_new_events_still_get_larger_ids_and_arrive(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    listener = RecordingListener()
    url = store_url("amnesia", base=own_redis.url, reconnect_max=0.1)
    store = await started(stores, url, listener)
    await store.watch("yan")
    before = await store.append("yan", b"data: before\n")
    await listener.wait_until(lambda: listener.ids_of("yan") == [before.id])
    own_redis.stop()  # nothing persisted: Redis comes back empty
    own_redis.start()
    await answering_again(store)
    after = await store.append("yan", b"data: after\n")
    await listener.wait_until(lambda: len(listener.ids_of("yan")) == 2)
    assert listener.ids_of("yan") == [before.id, after.id]
    assert event_key(after.id) > event_key(before.id)


async def test_a_broadcast_copy_gets_an_id_of_its_own_where_the_users_ids_ran_ahead(
    own_redis: RedisServer, stores: list[RedisStore]
) -> None:
    # Copies share one id; a stream whose newest id is beyond it (ids ahead of the
    # clock) gets a larger one, so each user's ids still increase.
    listener = RecordingListener()
    store = await started(stores, store_url("ahead", base=own_redis.url), listener)
    for user in ("ann", "bob", "cid"):
        await store.watch(user)
    future = "99999999999999-0"
    with redis.Redis.from_url(own_redis.url) as client:
        client.xadd(store._keys.stream("bob"), {"p": b"data: ahead\n"}, id=future)
    assert await store.append_to_all(["ann", "bob", "cid"], b"data: all\n") == 3
    await listener.wait_until(lambda: len(listener.events) == 3)
    heard = dict(listener.events)
    assert heard["ann"] is heard["cid"]
    assert event_key(heard["bob"].id) > event_key(future)
    replay = (await store.read_after("bob", None, limit=10)).events
    assert [event.id for event in replay] == [future, heard["bob"].id]
    after = await store.append("bob", b"data: next\n")
    assert event_key(after.id) > event_key(heard["bob"].id)
