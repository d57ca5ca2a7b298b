"""Stores and the factory that turns a URL into one.

``memory://``, ``sqlite:///path/to/file.db``, ``redis://host:port/db``,
``redis+cluster://host:port[,host:port...]`` and
``redis+sentinel://host:port[,host:port...]/master_name[/db]``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ssehub.exceptions import ConfigurationError
from ssehub.stores.base import (
    ReadResult,
    Retention,
    Store,
    StoreListener,
    UserRecord,
    UserState,
)
from ssehub.stores.memory import MemoryStore

__all__ = [
    "MemoryStore",
    "ReadResult",
    "Retention",
    "Store",
    "StoreListener",
    "UserRecord",
    "UserState",
    "open_store",
]


def open_store(url: str, *, retention: Retention | None = None) -> Store:
    """Build the store a URL names (not yet started).

    Raises:
        ConfigurationError: unknown scheme, malformed URL, or a missing driver.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore(retention=retention)
    if scheme == "sqlite":
        from ssehub.stores.sqlite import SqliteStore

        store: Store = SqliteStore.from_url(url, retention=retention)
        return store
    if scheme in ("redis", "rediss", "unix", "redis+sentinel"):
        from ssehub.stores.redis import RedisStore

        redis_store: Store = RedisStore.from_url(url, retention=retention)
        return redis_store
    if scheme == "redis+cluster":
        from ssehub.stores.redis_cluster import RedisClusterStore

        cluster_store: Store = RedisClusterStore.from_url(url, retention=retention)
        return cluster_store
    raise ConfigurationError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path/to/file.db, "
        "redis://host:port/db, redis+cluster://host:port[,host:port...] or "
        "redis+sentinel://host:port[,host:port...]/master_name[/db]"
    )
