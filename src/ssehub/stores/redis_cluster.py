"""The Redis store on a Redis Cluster (``redis+cluster://``).

The same store as `ssehub.stores.redis.RedisStore`, with its calls split by hash slot
and its live fan-out on sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7), so a
message travels only through the master that owns its user; see ARCHITECTURE.md,
"Redis store and scale-out".
"""

from __future__ import annotations

from typing import Any

from ssehub.stores import _redis_client
from ssehub.stores._redis_shards import ShardedSubscriber
from ssehub.stores.base import Retention
from ssehub.stores.redis import RedisStore


class RedisClusterStore(RedisStore):
    """Per-user Redis Streams on a cluster: each user's keys in one slot, on one master.

    Takes the arguments of `RedisStore`, with a ``redis.asyncio.RedisCluster`` client.
    """

    sharded = True

    def _new_subscriber(self, settings: dict[str, Any]) -> Any:
        return ShardedSubscriber(self._client, **settings)  # type: ignore[arg-type]

    @classmethod
    def from_url(cls, url: str, *, retention: Retention | None = None) -> RedisClusterStore:
        """Build a store from ``redis+cluster://HOST:PORT[,HOST:PORT...][?options]``.

        Any of the seed nodes finds the cluster. Options: those of ssehub that
        `RedisStore.from_url` takes, and ``socket_timeout``, ``socket_connect_timeout``
        (2 s by default) and ``max_connections`` (per master, 32 by default).

        Raises:
            ConfigurationError: a malformed URL or option, or redis-py is missing.
        """
        parsed = _redis_client.parse(url)
        client = _redis_client.cluster_client(parsed)
        return cls(client, retention=retention, **parsed.options)
