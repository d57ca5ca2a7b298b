"""A store on one Redis server, shared by every ssehub process and machine using it.

Design and cost per message: ARCHITECTURE.md, "Redis store and scale-out". In short:
one stream per user holds ids, history and replay; a Lua script appends and publishes
on the user's channel in one step; each node subscribes only to the channels of users
connected to it, and after a lost connection reads the gap from the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import ConfigurationError, StoreUnavailable
from ssehub.stores import _redis_scripts as scripts
from ssehub.stores.base import ReadResult, Retention, Store, UserRecord, UserState

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

logger = logging.getLogger("ssehub.stores.redis")

_Key = tuple[int, int]
_MAX_ID: Final = 2**64 - 1
_CHUNK: Final = 500  # appends per script call: bounds how long Redis runs one script
_FILL_USERS: Final = 100  # users read per round trip when filling a gap
_BROADCAST_KEEP: Final = 1000
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


class _BroadcastPayload(bytes):
    """A broadcast's payload as handed to the listener, carrying the broadcast's id.

    The hub of every node appends a broadcast for the users connected to it; a user
    connected to two nodes would get it twice. Handed back to `append_many`, this
    payload is appended at most once per user (see ``APPEND`` in the scripts).
    """

    broadcast_id: str


def _id(key: _Key) -> str:
    return f"{key[0]}-{key[1]}"


def _key(raw: bytes) -> _Key:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


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
        self._user_channel = (self._p + "c:").encode()
        self._broadcast_channel = (self._p + "bc").encode()
        self._control_channel = (self._p + "ctl").encode()
        self._node = uuid.uuid4().hex
        self._presence_ttl = presence_ttl
        self._tick: float | None = None
        self._last_refresh: float | None = None
        self._reconnect_max = reconnect_max
        self._ping_interval = ping_interval
        self._timeout = timeout
        self._max_age_ms = int(self.retention.max_age * 1000)
        self._stream_ttl_ms = self._max_age_ms + 60_000
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in ("APPEND", "BROADCAST", "READ", "SET_PRESENCE", "REFRESH", "USERS")
        }
        # Users watched by this node -> newest id handed to the listener (or known to
        # be older than anything the subscription will bring): where a gap fill starts.
        self._watched: dict[str, _Key | None] = {}
        self._last_broadcast: _Key | None = None
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._sub_lock = asyncio.Lock()
        self._presence_lock = asyncio.Lock()
        self._local_counts: dict[str, int] = {}
        self._conn: AbstractConnection | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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

    async def start(self) -> None:
        """Start the subscriber; wait a little for it, but start even if Redis is down."""
        self._task = asyncio.create_task(self._subscriber_forever(), name="ssehub-redis-sub")
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._up.wait()
        except TimeoutError:
            logger.warning("redis is not answering; running degraded until it does")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*self._errors):
            async with asyncio.timeout(self._timeout):
                await self._client.delete(f"{self._p}node:{self._node}")
        await self._client.aclose()

    async def ping(self) -> None:
        async with self._errors_as_unavailable():
            await self._client.ping()
        if not self._up.is_set():
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

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        maxlen = self.retention.max_events
        # Trim in steps of `slack` events, so the cost of finding what to drop is
        # spread over many appends; reads trim exactly.
        slack = max(10, maxlen // 10)
        stored: list[StoredEvent] = []
        async with self._errors_as_unavailable():
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                args: list[str | bytes | int] = [self._p, maxlen, slack, self._stream_ttl_ms]
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

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        after = ""
        if after_id is not None:
            ms, seq = event_key(after_id)
            after = _id((_MAX_ID, _MAX_ID)) if ms > _MAX_ID or seq > _MAX_ID else _id((ms, seq))
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
            await self._scripts["BROADCAST"](args=[self._p, _BROADCAST_KEEP, payload])

    async def publish_disconnect(self, user_id: str) -> None:
        async with self._errors_as_unavailable():
            await self._client.publish(self._control_channel, user_id.encode())

    async def watch(self, user_id: str) -> None:
        channel = self._user_channel + user_id.encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._errors_as_unavailable():
            # Where a gap fill would start: taken before subscribing, so nothing
            # published after it can be missed (what is seen twice, the hub drops).
            newest: Any = await self._client.xrevrange(f"{self._p}s:{user_id}", count=1)
        async with self._sub_lock:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("redis pub/sub is reconnecting")
            if user_id not in self._watched:
                self._watched[user_id] = _key(newest[0][0]) if newest else None
            self._pending.setdefault(channel, []).append(future)
            try:
                await conn.send_command("SUBSCRIBE", channel, check_health=False)
            except self._errors as exc:
                self._abandon(channel, future, user_id)
                raise StoreUnavailable(f"redis: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                await future
        except (StoreUnavailable, TimeoutError) as exc:
            async with self._sub_lock:
                self._abandon(channel, future, user_id)
                await self._unsubscribe(channel)
            raise StoreUnavailable("redis did not confirm the subscription") from exc

    def _abandon(self, channel: bytes, future: asyncio.Future[None], user_id: str) -> None:
        waiting = self._pending.get(channel, [])
        if future in waiting:
            waiting.remove(future)
        self._watched.pop(user_id, None)

    async def unwatch(self, user_id: str) -> None:
        async with self._sub_lock:
            if self._watched.pop(user_id, ()) != ():
                await self._unsubscribe(self._user_channel + user_id.encode())

    async def _unsubscribe(self, channel: bytes) -> None:
        # Best effort: a lost connection drops every subscription anyway, and the
        # next one subscribes only to the users still watched.
        if self._conn is not None:
            with contextlib.suppress(*self._errors):
                await self._conn.send_command("UNSUBSCRIBE", channel, check_health=False)

    async def _subscriber_forever(self) -> None:
        delay = 0.05
        while True:
            conn = self._new_connection()
            try:
                await self._subscribe(conn)
                delay = 0.05
                await self._read_forever(conn)
            except self._errors as exc:
                if self._up.is_set():
                    logger.warning("redis pub/sub connection lost (%s); reconnecting", exc)
                else:
                    logger.debug("redis pub/sub connection failed: %s", exc)
            except Exception:  # keep fan-out alive whatever happened; retry with back-off
                logger.exception("redis pub/sub failed; reconnecting")
            finally:
                self._lost(conn)
                with contextlib.suppress(*self._errors):
                    await conn.disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    def _new_connection(self) -> AbstractConnection:
        pool = self._client.connection_pool
        # No socket timeout on the subscriber: it is idle by design, and its health
        # is checked by pings instead.
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    def _lost(self, conn: AbstractConnection) -> None:
        self._up.clear()
        if self._conn is conn:
            self._conn = None
        for waiting in self._pending.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(StoreUnavailable("redis pub/sub connection lost"))
        self._pending.clear()

    async def _subscribe(self, conn: AbstractConnection) -> None:
        async with asyncio.timeout(self._timeout * 2):
            await conn.connect()  # type: ignore[no-untyped-call]
        async with self._sub_lock:
            channels = [self._broadcast_channel, self._control_channel]
            channels += [self._user_channel + user.encode() for user in self._watched]
            await conn.send_command("SUBSCRIBE", *channels, check_health=False)
            self._conn = conn
        # Confirmations come before any message published after them.
        for _ in channels:
            reply = await self._read(conn)
            if reply[0] != b"subscribe":
                raise StoreUnavailable(f"unexpected reply to SUBSCRIBE: {reply[0]!r}")
        await self._fill_gaps()
        self._up.set()
        logger.info("redis pub/sub connected (%d users watched)", len(self._watched))

    async def _read(self, conn: AbstractConnection) -> list[bytes]:
        async with asyncio.timeout(self._ping_interval * 3):
            reply: list[bytes] = await conn.read_response()
        return reply

    async def _read_forever(self, conn: AbstractConnection) -> None:
        pinger = asyncio.create_task(self._ping_forever(conn), name="ssehub-redis-ping")
        try:
            while True:
                reply = await self._read(conn)
                try:
                    self._dispatch(reply)
                except Exception:  # a listener's bug must not stop delivery to others
                    logger.exception("handling a redis pub/sub message failed")
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, *self._errors):
                await pinger

    async def _ping_forever(self, conn: AbstractConnection) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            async with self._sub_lock, asyncio.timeout(self._timeout):
                await conn.send_command("PING", check_health=False)

    def _dispatch(self, reply: list[bytes]) -> None:
        kind = reply[0]
        if kind == b"message":
            channel, data = reply[1], reply[2]
            if channel.startswith(self._user_channel):
                user_id = channel[len(self._user_channel) :].decode()
                event_id, _, payload = data.partition(b" ")
                self._deliver(user_id, event_id, payload)
            elif channel == self._broadcast_channel:
                event_id, _, payload = data.partition(b" ")
                self._deliver_broadcast(event_id, payload)
            elif channel == self._control_channel and self._listener is not None:
                self._listener.on_disconnect(data.decode())
        elif kind == b"subscribe":
            waiting = self._pending.get(reply[1])
            if waiting:
                future = waiting.pop(0)
                if not future.done():
                    future.set_result(None)

    def _deliver(self, user_id: str, event_id: bytes, payload: bytes) -> None:
        last = self._watched.get(user_id, ())
        if last == ():
            return
        key = _key(event_id)
        if last is not None and key <= last:
            return
        self._watched[user_id] = key
        if self._listener is not None:
            self._listener.on_event(user_id, StoredEvent(event_id.decode(), payload))

    def _deliver_broadcast(self, event_id: bytes, payload: bytes) -> None:
        key = _key(event_id)
        if self._last_broadcast is not None and key <= self._last_broadcast:
            return
        self._last_broadcast = key
        if self._listener is not None:
            tagged = _BroadcastPayload(payload)
            tagged.broadcast_id = event_id.decode()
            self._listener.on_broadcast(tagged)

    async def _fill_gaps(self) -> None:
        """Hand the listener what was published while no subscription was open."""
        maxlen = self.retention.max_events
        if self._last_broadcast is None:
            newest: Any = await self._client.xrevrange(f"{self._p}b", count=1)
            self._last_broadcast = _key(newest[0][0]) if newest else (0, 0)
        else:
            rows: Any = await self._client.xrange(
                f"{self._p}b", min=f"({_id(self._last_broadcast)}", count=_BROADCAST_KEEP
            )
            for event_id, fields in rows:
                self._deliver_broadcast(event_id, fields[b"p"])
        watched = list(self._watched.items())
        for start in range(0, len(watched), _FILL_USERS):
            chunk = watched[start : start + _FILL_USERS]
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id, last in chunk:
                    after = f"({_id(last)}" if last is not None else "-"
                    pipe.xrange(f"{self._p}s:{user_id}", min=after, count=maxlen)
                results = await pipe.execute()
            for (user_id, _), rows in zip(chunk, results, strict=True):
                for event_id, fields in rows:
                    self._deliver(user_id, event_id, fields[b"p"])

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
