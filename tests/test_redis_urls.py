"""Store URLs beyond one Redis: what they accept, and a clear error for the rest."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import open_store
from ssehub.stores._redis_client import closed_safe
from ssehub.stores.redis import RedisStore
from ssehub.stores.redis_cluster import RedisClusterStore

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "wanted"),
    [
        ("redis+cluster://", "seed nodes"),
        ("redis+cluster://10.0.0.1", "seed nodes"),
        ("redis+cluster://10.0.0.1:7000?db=2", "unknown redis+cluster option 'db'"),
        ("redis+cluster://10.0.0.1:7000?socket_timeout=soon", "must be a number"),
        ("redis+sentinel://10.0.0.1:26379", "master"),
        ("redis+sentinel://10.0.0.1:26379/hub/zero", "bad redis+sentinel db"),
        ("redis+sentinel://10.0.0.1:26379/hub?retries=3", "unknown redis+sentinel option"),
        ("redis://127.0.0.1:6379/0?prefix=a{b}", "bad redis prefix"),
    ],
)
def test_a_malformed_url_is_a_configuration_error(url: str, wanted: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(wanted)):
        open_store(url)


async def test_cluster_and_sentinel_urls_build_their_stores_without_connecting() -> None:
    cluster = open_store("redis+cluster://10.0.0.1:7000,10.0.0.2:7000?prefix=chat")
    assert isinstance(cluster, RedisClusterStore)
    assert cluster.shared
    sentinel = open_store("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/hub/3?prefix=x")
    assert type(sentinel) is RedisStore
    await sentinel.close()
    await cluster.close()


@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:1?prefix=down", "redis+sentinel://127.0.0.1:1/hub"]
)
async def test_a_store_whose_redis_cannot_be_reached_raises_store_unavailable(url: str) -> None:
    store = open_store(url)
    await store.start()  # degraded, not failed
    try:
        with pytest.raises(StoreUnavailable):
            await store.append("alice", b"data: x\n")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.watch("alice")
    finally:
        await store.close()


class _SwallowingWrite:
    """A connection whose write loses the task's cancellation, as ``asyncio.wait_for``
    does before Python 3.12 when the write ends in the same loop turn."""

    def __init__(self) -> None:
        self.dropped = False

    async def send_packed_command(self, command: object, check_health: bool = True) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)

    async def disconnect(self, nowait: bool = False) -> None:
        self.dropped = True


async def test_a_write_that_lost_its_tasks_cancellation_raises_it_and_drops_the_connection() -> (
    None
):
    connection = closed_safe(_SwallowingWrite)()
    with pytest.raises(asyncio.CancelledError):
        await connection.send_packed_command(b"PING\r\n")
    assert connection.dropped  # its answer would be read by the next command
