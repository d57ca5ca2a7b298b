"""Store fixtures: every contract test runs against memory, SQLite and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from ssehub.events import StoredEvent, event_key
from ssehub.stores import MemoryStore, Retention, Store
from ssehub.stores.redis import RedisStore
from ssehub.stores.redis_cluster import RedisClusterStore
from ssehub.stores.sqlite import SqliteStore
from tests.redis_cluster import cluster_url, forget_cluster_prefix
from tests.redis_server import forget_prefix, redis_url

STORE_KINDS = ["memory", "sqlite", "redis", "cluster"]


class RecordingListener:
    """A store listener that records what it hears and lets a test wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, StoredEvent]] = []
        self.broadcasts: list[bytes] = []
        self.disconnects: list[str] = []
        self._changed = asyncio.Event()

    def on_event(self, user_id: str, event: StoredEvent) -> None:
        self.events.append((user_id, event))
        self._changed.set()

    def on_broadcast(self, payload: bytes) -> None:
        self.broadcasts.append(payload)
        self._changed.set()

    def on_disconnect(self, user_id: str) -> None:
        self.disconnects.append(user_id)
        self._changed.set()

    def ids_of(self, user_id: str) -> list[str]:
        """Ids heard for one user, in the order they were heard."""
        return [event.id for user, event in self.events if user == user_id]

    async def wait_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``done()`` is true; fail after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


def later_than_any(event_id: str) -> str:
    """An id no store gave out yet for the user whose newest id is ``event_id``."""
    major, _ = event_key(event_id)
    return f"{major + 10**9}-0"


class StoreFactory:
    """Builds and starts stores of one kind for a test; closes them afterwards."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.stores: list[Store] = []
        self.prefixes: list[str] = []

    def build(self, retention: Retention | None = None) -> Store:
        """A store of this kind, not started (a fresh file or key prefix each time)."""
        if self.kind == "memory":
            return MemoryStore(retention=retention)
        if self.kind == "sqlite":
            path = self.tmp_path / f"store-{len(self.stores)}.db"
            return SqliteStore(path, retention=retention)
        prefix = f"test-{uuid.uuid4().hex}"  # a fresh key space for every store
        self.prefixes.append(prefix)
        if self.kind == "cluster":
            url = f"{cluster_url()}?prefix={prefix}&ping_interval=0.2"
            return RedisClusterStore.from_url(url, retention=retention)
        url = redis_url()
        separator = "&" if "?" in url else "?"
        return RedisStore.from_url(f"{url}{separator}prefix={prefix}", retention=retention)

    async def __call__(
        self, *, retention: Retention | None = None, listener: RecordingListener | None = None
    ) -> Store:
        """A started store bound to ``listener`` (a new one if omitted)."""
        store = self.build(retention)
        store.bind(listener or RecordingListener())
        await store.start()
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in reversed(self.stores):
            async with asyncio.timeout(30):  # a store that cannot close fails, never hangs
                await store.close()
        for prefix in self.prefixes:
            if self.kind == "cluster":
                forget_cluster_prefix(cluster_url(), prefix)
            else:
                forget_prefix(prefix)


Opener = Callable[..., Coroutine[Any, Any, SqliteStore]]


def trace(monkeypatch: pytest.MonkeyPatch, owner: type[Any]) -> list[str]:
    """Every statement, from now on, of the connections ``owner`` (Writer or Readers)
    opens."""
    statements: list[str] = []
    opened: Callable[[Any], Any] = owner._open

    def traced(self: Any) -> Any:
        found = opened(self)
        conn = found if isinstance(found, sqlite3.Connection) else found.connection
        conn.set_trace_callback(statements.append)
        return found

    monkeypatch.setattr(owner, "_open", traced)
    return statements


@contextlib.asynccontextmanager
async def reader_held(store: SqliteStore) -> AsyncIterator[None]:
    """Keep the store's one reader busy in the block: the reads submitted in it are taken
    as one batch after it."""
    held, release = threading.Event(), threading.Event()

    def hold(cur: sqlite3.Cursor) -> None:
        held.set()
        release.wait(10)

    holding = asyncio.ensure_future(store._read(hold))
    await asyncio.to_thread(held.wait, 10)
    try:
        yield
        await asyncio.sleep(0.05)  # the reads' tasks submit them
    finally:
        release.set()
        await holding


def transactions(statements: list[str]) -> list[list[str]]:
    """The statements of each transaction traced (those after each BEGIN)."""
    found: list[list[str]] = []
    for statement in list(statements):
        if statement.startswith("BEGIN"):
            found.append([])
        elif found:
            found[-1].append(statement)
    return found


@pytest.fixture
async def open_sqlite(tmp_path: Path) -> AsyncIterator[Opener]:
    """Start SQLite stores (on ``tmp_path/hub.db`` unless told); close them afterwards."""
    opened: list[SqliteStore] = []

    async def opener(path: Path | None = None, **options: Any) -> SqliteStore:
        listener = options.pop("listener", None) or RecordingListener()
        store = SqliteStore(path or tmp_path / "hub.db", **options)
        store.bind(listener)
        await store.start()
        opened.append(store)
        return store

    yield opener
    for store in reversed(opened):
        await store.close()


@pytest.fixture(params=STORE_KINDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Make started stores of the parametrised kind: ``await make_store(retention=...)``."""
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    await factory.close()


@pytest.fixture
def listener() -> RecordingListener:
    """The listener bound to the ``store`` fixture."""
    return RecordingListener()


@pytest.fixture
async def store(make_store: StoreFactory, listener: RecordingListener) -> Store:
    """A started store of each kind, with default retention, bound to ``listener``."""
    return await make_store(listener=listener)
