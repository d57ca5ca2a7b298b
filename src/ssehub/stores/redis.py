"""A store on one Redis server, shared by every ssehub process and machine using it.

Design and cost per message: ARCHITECTURE.md, "Redis store and scale-out". In short:
one stream per user holds ids, history and replay; a Lua script appends and publishes
on the user's channel in one step; each node subscribes only to the channels of users
connected to it (see `_redis_subscriber`), and after a lost connection reads the gap
from the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import _redis_scripts as scripts
from ssehub.stores._presence import PresenceLedger
from ssehub.stores._redis_subscriber import BROADCAST_KEEP, Subscriber, format_id
from ssehub.stores.base import (
    ReadResult,
    Retention,
    Store,
    StoreListener,
    UserRecord,
    UserState,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

_MAX_ID: Final = 2**64 - 1
_CHUNK: Final = 500  # appends per script call: bounds how long Redis runs one script
_DEFAULT_TTL: Final = 15.0
_MIN_TTL: Final = 3.0  # a busy event loop must not make live users flap


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:  # pragma: no cover - the dev install has it
        raise ConfigurationError(
            "the redis:// store needs the redis client: pip install 'ssehub[redis]'"
        ) from exc
    return aioredis


class RedisStore(Store):
    """Per-user Redis Streams, pub/sub fan-out and presence with a time-to-live.

    Args:
        client: a ``redis.asyncio.Redis`` with ``decode_responses=False`` and socket
            timeouts set (`from_url` builds one).
        prefix: namespace of every key and channel.
        retention: events kept per user, by count and age.
        presence_ttl: seconds a node's presence lives without a refresh; None for three
            times the keep-alive interval, as observed from `refresh_presence`.
        reconnect_max: longest pause, in seconds, between reconnection attempts.
        ping_interval: seconds between pings on the subscriber connection; it is
            declared lost after three intervals without an answer.
        timeout: seconds to wait for a subscription to be confirmed.
    """

    shared = True

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "ssehub",
        retention: Retention | None = None,
        presence_ttl: float | None = None,
        reconnect_max: float = 2.0,
        ping_interval: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(retention=retention)
        aioredis = _import_redis()
        self._client = client
        self._errors: tuple[type[BaseException], ...] = (
            aioredis.RedisError,
            OSError,
            TimeoutError,
        )
        self._p = prefix + ":"
        self._control_channel = (self._p + "ctl").encode()
        self._node = uuid.uuid4().hex
        self._node_channel = f"{self._p}n:{self._node}"
        self._presence_ttl = presence_ttl
        self._tick: float | None = None
        self._last_refresh: float | None = None
        self._timeout = timeout
        self._max_age_ms = int(self.retention.max_age * 1000)
        self._stream_ttl_ms = self._max_age_ms + 60_000
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in (
                "APPEND",
                "APPEND_ALL",
                "BROADCAST",
                "READ",
                "SET_PRESENCE",
                "REFRESH",
                "USERS",
            )
        }
        self._presence_lock = asyncio.Lock()
        self._local_counts: dict[str, int] = {}
        self._subscriber = Subscriber(
            client,
            prefix=self._p,
            node_channel=self._node_channel,
            errors=self._errors,
            fill_limit=self.retention.max_events,
            reconnect_max=reconnect_max,
            ping_interval=ping_interval,
            timeout=timeout,
        )

    @classmethod
    def from_url(cls, url: str, *, retention: Retention | None = None) -> RedisStore:
        """Build a store from ``redis://[user:password@]host:port/db?options``.

        ssehub's options: ``prefix`` (default ``ssehub``), ``presence_ttl``,
        ``reconnect_max``, ``ping_interval`` (seconds). Any other option goes to
        redis-py: ``socket_timeout``, ``socket_connect_timeout`` (both 2 s by default,
        so a Redis that does not answer never hangs a request), ``max_connections``
        (32 by default) and ``timeout`` (seconds to wait for a free one, 2 by default).

        Raises:
            ConfigurationError: a malformed URL or option, or redis-py is missing.
        """
        aioredis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        parts = urlsplit(url)
        ours: dict[str, Any] = {}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                if not value or any(ch in value for ch in " \r\n"):
                    raise ConfigurationError(f"bad redis prefix {value!r}")
                ours[name] = value
            elif name in ("presence_ttl", "reconnect_max", "ping_interval"):
                try:
                    ours[name] = float(value)
                except ValueError:
                    raise ConfigurationError(f"redis option {name} must be a number") from None
                if ours[name] <= 0:
                    raise ConfigurationError(f"redis option {name} must be greater than 0")
            else:
                rest.append((name, value))
        plain = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            # A bounded pool: a burst of publishes waits for a connection (up to
            # `timeout`, then 503) instead of opening one connection per request.
            pool = aioredis.BlockingConnectionPool.from_url(
                plain,
                max_connections=32,
                timeout=2.0,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
                protocol=2,  # pub/sub messages as plain replies, on every Redis version
                # One immediate retry replaces a pooled connection that a Redis
                # restart closed; a Redis that is down still fails at once.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            pool.connection_class(**pool.connection_kwargs)  # refuses unknown options
            client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad redis URL: {exc}") from exc
        return cls(client, retention=retention, **ours)

    # -- life cycle -------------------------------------------------------------

    def bind(self, listener: StoreListener) -> None:
        super().bind(listener)
        self._subscriber.listener = listener

    async def start(self) -> None:
        """Start the subscriber; wait a little for it, but start even if Redis is down."""
        await self._subscriber.start()

    async def close(self) -> None:
        await self._subscriber.close()
        with contextlib.suppress(*self._errors):
            async with asyncio.timeout(self._timeout):
                await self._client.delete(f"{self._p}node:{self._node}")
        await self._client.aclose()

    async def ping(self) -> None:
        async with self._errors_as_unavailable():
            await self._client.ping()
        if not self._subscriber.up.is_set():
            raise StoreUnavailable("redis pub/sub is reconnecting")

    @contextlib.asynccontextmanager
    async def _errors_as_unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except StoreUnavailable:
            raise
        except self._errors as exc:
            raise StoreUnavailable(f"redis: {exc or type(exc).__name__}") from exc

    # -- the log ------------------------------------------------------------------

    def _append_args(self) -> list[str | bytes | int]:
        """The arguments APPEND and APPEND_ALL begin with: prefix, maxlen, slack, ttl."""
        maxlen = self.retention.max_events
        # Trim in steps of `slack` events, so the cost of finding what to drop is
        # spread over many appends; reads trim exactly.
        slack = max(10, maxlen // 10)
        return [self._p, maxlen, slack, self._stream_ttl_ms]

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        async with self._errors_as_unavailable():
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                args = self._append_args()
                for user_id, payload in chunk:
                    broadcast = getattr(payload, "broadcast_id", "")
                    args += (user_id, payload, broadcast)
                ids = await self._scripts["APPEND"](args=args)
                stored += (
                    StoredEvent(raw.decode(), bytes(payload))
                    for raw, (_, payload) in zip(ids, chunk, strict=True)
                    if raw is not None  # a broadcast another node appended already
                )
        return stored

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        # One script call and, for users with streams on this node only, one message
        # back on this node's channel, instead of one per user.
        broadcast = getattr(payload, "broadcast_id", "")
        head = [*self._append_args(), self._node_channel, broadcast, payload]
        appended = 0
        async with self._errors_as_unavailable():
            for start in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[start : start + _CHUNK])
                appended += int(await self._scripts["APPEND_ALL"](args=[*head, *chunk]))
        return appended

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        after = ""
        if after_id is not None:
            ms, seq = event_key(after_id)
            huge = ms > _MAX_ID or seq > _MAX_ID
            after = format_id((_MAX_ID, _MAX_ID) if huge else (ms, seq))
        args: list[str | int] = [
            self._p, user_id, after, limit,
            self.retention.max_events, self._max_age_ms, self._stream_ttl_ms,
        ]  # fmt: skip
        async with self._errors_as_unavailable():
            reset, rows = await self._scripts["READ"](args=args)
        return ReadResult(
            [StoredEvent(raw.decode(), fields[1]) for raw, fields in rows], bool(reset)
        )

    # -- fan-out ------------------------------------------------------------------

    async def publish_broadcast(self, payload: bytes) -> None:
        async with self._errors_as_unavailable():
            await self._scripts["BROADCAST"](args=[self._p, BROADCAST_KEEP, payload])

    async def publish_disconnect(self, user_id: str) -> None:
        async with self._errors_as_unavailable():
            await self._client.publish(self._control_channel, user_id.encode())

    def presence_ledger(self) -> PresenceLedger:
        """This store's presence capability (see `_redis_presence`)."""
        from ssehub.stores._redis_presence import RedisLedger

        return RedisLedger(self)

    async def watch(self, user_id: str) -> None:
        await self._subscriber.watch(user_id)

    async def unwatch(self, user_id: str) -> None:
        await self._subscriber.unwatch(user_id)

    # -- presence -----------------------------------------------------------------

    def _ttl_ms(self) -> int:
        ttl = self._presence_ttl
        if ttl is None:
            ttl = _DEFAULT_TTL if self._tick is None else max(_MIN_TTL, 3 * self._tick)
        return int(ttl * 1000)

    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        if connections > 0:
            self._local_counts[user_id] = connections
        else:
            self._local_counts.pop(user_id, None)
        args: list[str | int] = [
            self._p, user_id, self._node, connections, repr(time.time()),
            cursor or "", self._ttl_ms(),
        ]  # fmt: skip
        # One writer at a time, so a refresh never lands after a newer count.
        async with self._presence_lock, self._errors_as_unavailable():
            await self._scripts["SET_PRESENCE"](args=args)

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        now = time.monotonic()
        if self._last_refresh is not None:
            interval = now - self._last_refresh
            self._tick = interval if self._tick is None else min(self._tick, interval)
        self._last_refresh = now
        async with self._presence_lock:
            args: list[str | int] = [self._p, self._node, self._ttl_ms(), repr(time.time())]
            for user_id in user_ids:
                args += (user_id, self._local_counts.get(user_id, 0))
            async with self._errors_as_unavailable():
                await self._scripts["REFRESH"](args=args)

    def _records(self, rows: list[list[Any]]) -> list[UserRecord]:
        return [
            UserRecord(
                user.decode(),
                bool(known),
                int(conns),
                float(seen) if seen is not None else None,
                cursor.decode() if cursor is not None else None,
                int(pending),
            )
            for user, known, conns, seen, cursor, pending in rows
        ]

    def _users_args(self) -> list[str | int]:
        return [self._p, self.retention.max_events, self._max_age_ms, self._stream_ttl_ms]

    async def get_user(self, user_id: str) -> UserRecord:
        async with self._errors_as_unavailable():
            rows, _ = await self._scripts["USERS"](args=[*self._users_args(), "get", user_id])
        return self._records(rows)[0]

    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        if state is UserState.UNKNOWN or limit <= 0:
            return []  # only known users are listed
        wanted = state.value if state is not None else ""
        records: list[UserRecord] = []
        cursor: str | bytes = after or ""
        while len(records) < limit:
            args = [*self._users_args(), "list", cursor, limit - len(records), wanted]
            async with self._errors_as_unavailable():
                rows, cursor = await self._scripts["USERS"](args=args)
            records += self._records(rows)
            if cursor is None:
                break
        return records
