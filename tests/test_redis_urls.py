"""Store URLs beyond one Redis: what they accept, and a clear error for the rest."""

from __future__ import annotations

import re

import pytest

from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import open_store
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
