"""A store on Redis, shared by every ssehub process and machine using it.

One Redis server (``redis://``), a Redis Cluster (``redis+cluster://``) or the master
that Sentinel names (``redis+sentinel://``). Design and cost per message:
ARCHITECTURE.md, "Redis store and scale-out". In short: one stream per user holds ids,
history and replay; a Lua script appends and publishes on the user's channel in one
step; each node subscribes only to the channels of users connected to it (see
`_redis_subscriber`), and after a lost connection reads the gap from the streams. All
of a user's keys share one hash slot (`_redis_keys`), so on a cluster each script runs
on the master that owns the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from ssehub import idempotency
from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import StoreUnavailable
from ssehub.stores import _redis_client
from ssehub.stores import _redis_scripts as scripts
from ssehub.stores._presence import PresenceLedger
from ssehub.stores._redis_batch import StepBatch
from ssehub.stores._redis_keys import Keys, by_slot, tag
from ssehub.stores._redis_outbox import RedisOutbox
from ssehub.stores._redis_subscriber import BROADCAST_KEEP, Subscriber, format_id
from ssehub.stores.base import (
    PresenceChange,
    ReadResult,
    Retention,
    Store,
    StoreListener,
    UserRecord,
    UserState,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

Call = tuple[list[str], list[Any]]  # a script call's keys and arguments

_MAX_ID: Final = 2**64 - 1
_CHUNK: Final = 500  # appends per script call: bounds how long Redis runs one script
_DEFAULT_TTL: Final = 15.0
_MIN_TTL: Final = 3.0  # a busy event loop must not make live users flap
_RETRY_RECORD_MS: Final = 60_000  # how long an append without a client key is remembered
_USERS_PAGE: Final = 1000
_PREFETCH: Final = 1000  # events read with a new stream's start (see `start_after`)
_OPEN_CHUNK: Final = 100  # streams per OPEN call: each may read a page of history


class RedisStore(Store):
    """Per-user Redis Streams, pub/sub fan-out and presence with a time-to-live.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) with
            ``decode_responses=False`` and socket timeouts set (`from_url` builds one).
        prefix: namespace of every key and channel.
        retention: events kept per user, by count and age.
        presence_ttl: seconds a node's presence lives without a refresh; None for three
            times the keep-alive interval, as observed from `refresh_presence`.
        reconnect_max: longest pause, in seconds, between reconnection attempts.
        ping_interval: seconds between pings on the subscriber connection; it is
            declared lost after three intervals without an answer.
        timeout: seconds to wait for a subscription to be confirmed.
        subscriber: the node's subscriber (a cluster store passes a sharded one);
            None for one pub/sub connection to ``client``.
    """

    shared = True
    #: Appends keep their idempotency records themselves (see `ssehub.idempotency`).
    idempotent_appends = True
    #: Whether keys spread over hash slots (a cluster): calls are split by slot.
    sharded = False

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
        aioredis = _redis_client.import_redis()
        from redis.exceptions import NoScriptError, RedisClusterException, ResponseError

        self._client = client
        self._errors: tuple[type[BaseException], ...] = (
            aioredis.RedisError,
            RedisClusterException,  # not a RedisError: no node answers, a slot not covered
            OSError,
            TimeoutError,
        )
        self._response_error = ResponseError
        self._no_script = NoScriptError
        self._keys = keys = Keys(prefix)
        self._p = keys.p
        self._pub = "SPUBLISH" if self.sharded else "PUBLISH"
        self._node = uuid.uuid4().hex
        self._node_channel = "" if self.sharded else keys.node_channel(self._node)
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
                "NEWEST",
                "OPEN",
                "READ",
                "SET_PRESENCE",
                "REFRESH",
                "USER",
            )
        }
        self._presence_lock = asyncio.Lock()
        # Users whose channel this node has subscribed to (`watch` returned), and the
        # first page of history `start_after` read for a stream of theirs.
        self._live: set[str] = set()
        self._prefetch: dict[str, tuple[str | None, ReadResult]] = {}
        # The reads of streams opening in the same loop step go out as one pipeline.
        self._reads = StepBatch[Call, Any](lambda calls: self._scripted_each("READ", calls))
        self._opens = StepBatch[tuple[str, int], Any](self._open_many)
        self._local_counts: dict[str, int] = {}
        self._subscriber = self._new_subscriber(
            {
                "keys": keys,
                "errors": self._errors,
                "fill_limit": self.retention.max_events,
                "reconnect_max": reconnect_max,
                "ping_interval": ping_interval,
                "timeout": timeout,
                "newest": self._newest_many,
            }
        )

    def _new_subscriber(self, settings: dict[str, Any]) -> Any:
        """The node's subscriber, with the settings every kind of subscriber takes."""
        return Subscriber(self._client, node_channel=self._node_channel, **settings)

    @classmethod
    def from_url(cls, url: str, *, retention: Retention | None = None) -> RedisStore:
        """Build a store from ``redis://[user:password@]host:port/db?options``.

        Or from ``redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB][?options]``:
        the master those Sentinels name, followed across failovers (its password, if
        any, in the URL's user part).

        ssehub's options: ``prefix`` (default ``ssehub``), ``presence_ttl``,
        ``reconnect_max``, ``ping_interval`` (seconds). Any other option goes to
        redis-py: ``socket_timeout``, ``socket_connect_timeout`` (both 2 s by default,
        so a Redis that does not answer never hangs a request), ``max_connections``
        (32 by default) and ``timeout`` (seconds to wait for a free one, 2 by default).

        Raises:
            ConfigurationError: a malformed URL or option, or redis-py is missing.
        """
        parsed = _redis_client.parse(url)
        if url.lower().startswith("redis+sentinel:"):
            client = _redis_client.sentinel_client(parsed)
        else:
            client = _redis_client.single_client(parsed)
        return cls(client, retention=retention, **parsed.options)

    # -- life cycle -------------------------------------------------------------

    def bind(self, listener: StoreListener) -> None:
        super().bind(listener)
        self._subscriber.listener = listener

    async def start(self) -> None:
        """Start the subscriber; wait a little for it, but start even if Redis is down."""
        await self._subscriber.start()

    async def close(self) -> None:
        await self._subscriber.close()
        await self._client.aclose()

    async def ping(self) -> None:
        async with self._errors_as_unavailable():
            await self._client.ping()
        if not self._subscriber.is_up():
            raise StoreUnavailable("redis pub/sub is reconnecting")

    def outbox(self) -> RedisOutbox:
        """Webhook deliveries shared by every node (see `ssehub.stores._redis_outbox`)."""
        return RedisOutbox(self._client, prefix=self._p[:-1], errors=self._errors)

    @contextlib.asynccontextmanager
    async def _errors_as_unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except StoreUnavailable:
            raise
        except self._errors as exc:
            if isinstance(exc, self._response_error) and str(exc).startswith("IDEMPOTENCY"):
                raise idempotency.IdempotencyKeyReused from None
            raise StoreUnavailable(f"redis: {exc or type(exc).__name__}") from exc

    async def _scripted(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """Run a script once per ``(keys, args)``, in order; raise the first error after.

        Several calls go out as one pipeline: one round trip on one server, one per
        master on a cluster (each master runs its calls in order, so the chunks of
        one slot stay in order). A master that does not know the script yet (a
        replica just promoted) gets it, and the calls it refused are sent again.
        """
        results = await self._scripted_each(name, calls)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _scripted_each(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """`_scripted`, with each call's error in place of its answer."""
        script = self._scripts[name]
        if len(calls) <= 1:
            try:
                return [await script(keys=keys, args=args) for keys, args in calls]
            except self._errors as exc:
                return [exc]
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            for index in todo:
                keys, args = calls[index]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            for index, answer in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                results[index] = answer
            todo = [index for index in todo if isinstance(results[index], self._no_script)]
            if not todo:
                break
            await self._client.script_load(script.script)
        return results

    # -- the log ------------------------------------------------------------------

    def _groups(self, user_ids: Sequence[str]) -> list[list[int]]:
        """Positions of users that one script call may take: one slot on a cluster."""
        if self.sharded:
            return list(by_slot(user_ids).values())
        return [list(range(len(user_ids)))]

    def _record(self, head: str, ordinal: int, intent: idempotency.Intent | None) -> list[Any]:
        """Idempotency arguments (record, fingerprint, ttl) of one append call.

        Without a client key, a random one still makes a retry of the same call (the
        client library retries once after a lost connection) append nothing twice.
        """
        if intent is None:
            return [f"{head}:{ordinal}:~{uuid.uuid4().hex}", "", _RETRY_RECORD_MS]
        return [f"{head}:{ordinal}:{intent.key}", intent.fingerprint, self._stream_ttl_ms]

    def _append_args(self) -> list[str | bytes | int]:
        """The arguments every append script begins with: prefix, maxlen, slack, ttl."""
        maxlen = self.retention.max_events
        # Trim in steps of `slack` events, so the cost of finding what to drop is
        # spread over many appends; reads trim exactly.
        return [self._p, maxlen, max(10, maxlen // 10), self._stream_ttl_ms]

    def _chunks(self, user_ids: Sequence[str], size: int = _CHUNK) -> list[list[int]]:
        """Positions of users, in script calls of at most ``size`` users of one slot."""
        return [
            group[start : start + size]
            for group in self._groups(user_ids)
            for start in range(0, len(group), size)
        ]

    async def _per_user(
        self,
        name: str,
        user_ids: Sequence[str],
        head: Sequence[Any],
        each: Sequence[Any] = (),
        size: int = _CHUNK,
    ) -> list[Any]:
        """Run a script whose ``KEYS`` are the users' streams; its answer for each user.

        One call per chunk of at most ``size`` users of one slot, with the arguments
        ``head`` and then, if given, ``each``'s value for each user of the chunk. A call
        that failed gives its error to each of its users.
        """
        chunks = self._chunks(user_ids, size)
        calls: list[Call] = [
            (
                [self._keys.stream(user_ids[index]) for index in chunk],
                [*head, *(each[index] for index in chunk)] if each else [*head],
            )
            for chunk in chunks
        ]
        answers: list[Any] = [None] * len(user_ids)
        for chunk, answer in zip(chunks, await self._scripted_each(name, calls), strict=True):
            if isinstance(answer, BaseException):
                for index in chunk:
                    answers[index] = answer
            else:
                for index, one in zip(chunk, answer, strict=True):
                    answers[index] = one
        return answers

    async def _newest_many(self, user_ids: list[str]) -> list[Any]:
        """The id of each user's newest event (None for none), for the subscriber."""
        return await self._per_user("NEWEST", user_ids, ())

    async def _open_many(self, requests: list[tuple[str, int]]) -> list[Any]:
        """The `start_after` answers of streams opening at once (`OPEN`)."""
        head = [
            self._p, self._node,
            self.retention.max_events, self._max_age_ms, self._stream_ttl_ms,
        ]  # fmt: skip
        user_ids = [user_id for user_id, _ in requests]
        limits = [limit for _, limit in requests]
        return await self._per_user("OPEN", user_ids, head, limits, _OPEN_CHUNK)

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        intent = idempotency.current()
        head = [*self._append_args(), self._pub]
        chunks = self._chunks([user_id for user_id, _ in items])
        calls: list[Call] = []
        for ordinal, chunk in enumerate(chunks):
            first = items[chunk[0]][0]
            args = [*head, *self._record(self._keys.user("i", first), ordinal, intent)]
            for index in chunk:
                user_id, payload = items[index]
                args += (tag(user_id), payload, getattr(payload, "broadcast_id", ""))
            calls.append(([self._keys.stream(first)], args))
        ids: list[bytes | None] = [None] * len(items)
        async with self._errors_as_unavailable():
            answers = await self._scripted("APPEND", calls)
        for chunk, answer in zip(chunks, answers, strict=True):
            for index, raw in zip(chunk, answer, strict=True):
                ids[index] = raw
        return [
            StoredEvent(raw.decode(), bytes(payload))
            for raw, (_, payload) in zip(ids, items, strict=True)
            if raw is not None  # a broadcast another node appended already
        ]

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        # One script call and, for users with streams on this node only, one message
        # back on this node's channel, instead of one per user (on one server).
        head = [
            *self._append_args(), self._pub,
            self._node_channel, getattr(payload, "broadcast_id", ""), payload,
        ]  # fmt: skip
        calls: list[Call] = []
        for chunk in self._chunks(user_ids):
            args = [*head]
            for index in chunk:
                args += (user_ids[index], tag(user_ids[index]))
            calls.append(([self._keys.stream(user_ids[chunk[0]])], args))
        async with self._errors_as_unavailable():
            return sum(int(count) for count in await self._scripted("APPEND_ALL", calls))

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        found = self._prefetch.pop(user_id, None) if self._prefetch else None
        if found is not None and found[0] == after_id:
            result = found[1]
            if len(result.events) < _PREFETCH or limit <= len(result.events):
                return ReadResult(result.events[:limit], result.reset)
        after = ""
        if after_id is not None:
            ms, seq = event_key(after_id)
            huge = ms > _MAX_ID or seq > _MAX_ID
            after = format_id((_MAX_ID, _MAX_ID) if huge else (ms, seq))
        args: list[str | int] = [
            self._p, tag(user_id), after, limit,
            self.retention.max_events, self._max_age_ms, self._stream_ttl_ms,
        ]  # fmt: skip
        async with self._errors_as_unavailable():
            reset, rows = await self._reads(([self._keys.stream(user_id)], args))
        return self._page(reset, rows)

    @staticmethod
    def _page(reset: int, rows: list[Any]) -> ReadResult:
        return ReadResult(
            [StoredEvent(raw.decode(), fields[1]) for raw, fields in rows], bool(reset)
        )

    async def start_after(self, user_id: str) -> str | None:
        """Where a stream of the user starts when this node has none (`PresenceLedger`).

        After the user's newest event if a stream of the user is open on another node,
        else after the user's cursor. For a user this node has subscribed to, the same
        script reads the first page after that start, and the `read_after` that follows
        is answered from it: one round trip to open a stream, not three. Live events
        published after the subscription reach the stream's backlog, so a page read
        after it misses nothing.
        """
        prefetch = user_id in self._live
        async with self._errors_as_unavailable():
            raw, reset, rows = await self._opens((user_id, _PREFETCH if prefetch else 0))
        start = raw.decode() if raw is not None else None
        if prefetch and user_id in self._live:
            self._prefetch[user_id] = (start, self._page(reset, rows))
        return start

    # -- fan-out ------------------------------------------------------------------

    async def publish_broadcast(self, payload: bytes) -> None:
        intent = idempotency.current()
        record = self._record(self._keys.broadcast_record(""), 0, intent)
        keys = self._keys
        args = [BROADCAST_KEEP, payload, keys.broadcast_channel, self._pub, *record]
        async with self._errors_as_unavailable():
            await self._scripts["BROADCAST"](keys=[keys.broadcasts], args=args)

    async def publish_disconnect(self, user_id: str) -> None:
        # Every node hears it, whether or not it holds a stream of the user: on a
        # cluster through the shard of the broadcast slot (disconnects are rare).
        channel = self._keys.control_channel
        async with self._errors_as_unavailable():
            await self._client.execute_command(self._pub, channel, user_id.encode())  # type: ignore[no-untyped-call]

    def presence_ledger(self) -> PresenceLedger:
        """This store's presence capability (see `_redis_presence`)."""
        from ssehub.stores._redis_presence import RedisLedger

        return RedisLedger(self)

    async def watch(self, user_id: str) -> None:
        await self._subscriber.watch(user_id)
        self._live.add(user_id)

    async def unwatch(self, user_id: str) -> None:
        self._live.discard(user_id)
        self._prefetch.pop(user_id, None)
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
        await self.set_presence_many([(user_id, connections, cursor)])

    async def set_presence_many(self, changes: Sequence[PresenceChange]) -> None:
        # One script call per chunk of users (per hash slot on a cluster) and one ZADD
        # per page of users, sent together: a burst of streams opening costs one round
        # trip, not two commands a user.
        if not changes:
            return
        for user_id, connections, _ in changes:
            if connections > 0:
                self._local_counts[user_id] = connections
            else:
                self._local_counts.pop(user_id, None)
        user_ids = [user_id for user_id, _, _ in changes]
        head: list[str | int] = [self._p, self._node, repr(time.time()), self._ttl_ms()]
        calls: list[Call] = []
        for chunk in self._chunks(user_ids):
            args = [*head]
            for index in chunk:
                user_id, connections, cursor = changes[index]
                args += (tag(user_id), connections, cursor or "")
            calls.append((self._presence_keys([user_ids[i] for i in chunk]), args))
        # One writer at a time, so a refresh never lands after a newer count.
        async with self._presence_lock, self._errors_as_unavailable():
            await asyncio.gather(self._scripted("SET_PRESENCE", calls), self._mark_known(user_ids))

    async def _mark_known(self, user_ids: Sequence[str]) -> None:
        """Add users to the sorted set of known users, a page per command."""
        for start in range(0, len(user_ids), _USERS_PAGE):
            known = dict.fromkeys(user_ids[start : start + _USERS_PAGE], 0)
            await self._client.zadd(self._keys.users, known)

    def _presence_keys(self, user_ids: Sequence[str]) -> list[str]:
        """The keys the presence scripts write for users of one slot, declared to Redis.

        While a slot moves between cluster masters, Redis runs a script on the old one
        only if every declared key is still there, and through ``ASK`` on the new one
        only if none is left behind (else ``TRYAGAIN``, then a 503). Routed by another
        key of the slot, a refresh would write a user's presence on the new master while
        the old one still holds it: two copies, and the move stuck (``BUSYKEY``).
        """
        return [self._keys.user(kind, user_id) for user_id in user_ids for kind in "pu"]

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        now = time.monotonic()
        if self._last_refresh is not None:
            interval = now - self._last_refresh
            self._tick = interval if self._tick is None else min(self._tick, interval)
        self._last_refresh = now
        if not user_ids:
            return
        async with self._presence_lock:
            head: list[str | int] = [self._p, self._node, self._ttl_ms(), repr(time.time())]
            calls: list[Call] = []
            for chunk in self._chunks(user_ids):
                args = [*head]
                for index in chunk:
                    args += (tag(user_ids[index]), self._local_counts.get(user_ids[index], 0))
                calls.append((self._presence_keys([user_ids[i] for i in chunk]), args))
            async with self._errors_as_unavailable():
                await self._scripted("REFRESH", calls)
                await self._mark_known(user_ids)

    async def _user_rows(self, user_ids: Sequence[str]) -> list[list[Any]]:
        head: list[str | int] = [
            self._p, self.retention.max_events, self._max_age_ms, self._stream_ttl_ms
        ]  # fmt: skip
        calls = [([self._keys.stream(u)], [*head, u, tag(u)]) for u in user_ids]
        async with self._errors_as_unavailable():
            return await self._scripted("USER", calls)

    @staticmethod
    def _record_of(row: list[Any]) -> UserRecord:
        user, known, conns, seen, cursor, pending = row
        return UserRecord(
            user.decode(),
            bool(known),
            int(conns),
            float(seen) if seen is not None else None,
            cursor.decode() if cursor is not None else None,
            int(pending),
        )

    async def get_user(self, user_id: str) -> UserRecord:
        (row,) = await self._user_rows([user_id])
        return self._record_of(row)

    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        if state is UserState.UNKNOWN or limit <= 0:
            return []  # only known users are listed
        records: list[UserRecord] = []
        start: str | bytes = "(" + after if after else "-"
        while len(records) < limit:
            async with self._errors_as_unavailable():
                page: Any = await self._client.zrangebylex(
                    self._keys.users, start, "+", start=0, num=min(_USERS_PAGE, limit * 4)
                )
            if not page:
                break
            for row in await self._user_rows([raw.decode() for raw in page]):
                record = self._record_of(row)
                if state is None or record.state is state:
                    records.append(record)
                    if len(records) == limit:
                        break
            start = b"(" + page[-1]
        return records
