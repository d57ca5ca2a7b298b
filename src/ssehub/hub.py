"""The hub: connection registry, fan-out, keep-alives, presence; the Messenger.

Delivery path: `send` encodes once, the store appends and gives the id, the store's
listener (`on_event`) builds the frame once and hands it to each open stream of the
user on this node.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

import orjson

from ssehub import events
from ssehub._latency import LatencyHistogram
from ssehub._signals import chain_shutdown_signals
from ssehub.connection import Connection, FrameSink
from ssehub.exceptions import LimitExceeded, ServerFull, StoreUnavailable
from ssehub.limits import Limits, check_payload, check_user_id
from ssehub.messenger import Message, UserStatus
from ssehub.presence import DEFAULT_OFFLINE_GRACE, Presence
from ssehub.stores.base import Store, UserRecord

logger = logging.getLogger("ssehub.hub")

_PRESENCE_RETRY_SECONDS = 1.0
_BROADCAST_CHUNK = 1000  # users appended per store round trip
_BROADCAST_RETRY_SECONDS = 30.0
_MAX_PENDING_BROADCASTS = 1000
_CLOSE_DRAIN_SECONDS = 5.0


@dataclasses.dataclass(slots=True)
class HubStats:
    """Counters the hub keeps as plain integers; metrics read them at scrape time."""

    accepted: int = 0
    delivered: int = 0
    replayed: int = 0
    dropped_slow: int = 0
    connects: int = 0
    disconnects: int = 0
    refused: int = 0
    queued_offline: int = 0
    store_latency: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)


class Hub:
    """Delivers each user's messages to all of their open streams; a `Messenger`.

    Args:
        store: where messages are kept and fanned out.
        keepalive: seconds between keep-alives on every stream (one shared timer).
        limits: input and connection bounds.
        retry_ms: the reconnection time sent to clients when the hub shuts down.
        replay_batch: events read from the store per round trip during replay.
        offline_grace: see `Presence`.
        undelivered_after: see `Presence`.
    """

    def __init__(
        self,
        store: Store,
        *,
        keepalive: float = 5.0,
        limits: Limits | None = None,
        retry_ms: int = 2000,
        replay_batch: int = 1000,
        offline_grace: float = DEFAULT_OFFLINE_GRACE,
        undelivered_after: float | None = None,
    ) -> None:
        self.store = store
        self.keepalive = keepalive
        self.limits = limits or Limits()
        self.retry_ms = retry_ms
        self.replay_batch = replay_batch
        self.stats = HubStats()
        self.presence = Presence(offline_grace=offline_grace, undelivered_after=undelivered_after)
        self._streams: dict[str, list[Connection]] = {}
        self._open_count = 0
        self._delivered_ids: dict[str, str] = {}
        self._presence_dirty: dict[str, list[asyncio.Future[None]]] = {}
        self._presence_wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Broadcasts accepted and not yet appended for this node's users (bounded by
        # _MAX_PENDING_BROADCASTS: past it, broadcast_encoded answers StoreUnavailable).
        self._broadcasts: collections.deque[tuple[list[str], bytes]] = collections.deque()
        self._broadcast_wakeup = asyncio.Event()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restore_signals: Callable[[], None] = lambda: None
        store.bind(self)

    # -- life cycle -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """Start the hub, and close it on the way out (for an ASGI lifespan)."""
        await self.start()
        try:
            yield self
        finally:
            await self.close()

    async def start(self) -> None:
        """Start the store and the hub's two background tasks."""
        self._loop = asyncio.get_running_loop()
        await self.store.start()
        self._spawn(self._keepalive_forever(), "ssehub-keepalive")
        self._spawn(self._presence_forever(), "ssehub-presence")
        self._spawn(self._broadcast_forever(), "ssehub-broadcast")
        # Inside a server, SIGINT/SIGTERM end the streams first (see ssehub._signals).
        self._restore_signals = chain_shutdown_signals(self.request_shutdown)

    async def close(self) -> None:
        """End every stream with a ``retry:`` hint, flush broadcasts and presence, close."""
        self._restore_signals()
        self.shutdown_streams()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain_broadcasts(), _CLOSE_DRAIN_SECONDS)
        await self._write_presence(list(self._presence_dirty))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    def request_shutdown(self) -> None:
        """Close every stream soon; safe to call from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.shutdown_streams)

    def shutdown_streams(self) -> None:
        """Close every open stream now, telling clients to come back after retry_ms."""
        self._closing = True
        final = events.retry_frame(self.retry_ms)
        for streams in list(self._streams.values()):
            for connection in list(streams):
                connection.close(final)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # -- Messenger ----------------------------------------------------------------

    async def send(self, user_id: str, data: object, *, event: str | None = None) -> str:
        """Send one message to a user; return its event id."""
        (event_id,) = await self.send_many([Message(user_id, data, event)])
        return event_id

    async def send_many(self, messages: Iterable[Message]) -> list[str]:
        """Send several messages, encoded once each; return their ids in order."""
        items = [(self._user(m.user_id), self.encode(m.data, m.event)) for m in messages]
        return await self.send_encoded(items)

    async def send_encoded(self, items: list[tuple[str, bytes]]) -> list[str]:
        """Append already-encoded payloads (see `events.encode_payload`)."""
        if not items:
            return []
        started = time.perf_counter()
        stored = await self.store.append_many(items)
        self.stats.store_latency.observe(time.perf_counter() - started)
        self.stats.accepted += len(stored)
        streams = self._streams
        self.stats.queued_offline += sum(1 for user_id, _ in items if user_id not in streams)
        return [event.id for event in stored]

    async def broadcast(self, data: object, *, event: str | None = None) -> None:
        """Send a message to every connected user, on every node."""
        await self.broadcast_encoded(self.encode(data, event))

    async def broadcast_encoded(self, payload: bytes) -> None:
        """Broadcast an already-encoded payload.

        Raises:
            StoreUnavailable: the store cannot be reached, or too many broadcasts wait
                on this node already.
        """
        if len(self._broadcasts) >= _MAX_PENDING_BROADCASTS:
            raise StoreUnavailable("too many broadcasts are waiting; try again shortly")
        await self.store.publish_broadcast(payload)

    async def status(self, user_id: str) -> UserStatus:
        """A user's state: connected, disconnected or unknown, with counts."""
        return self.user_status(await self.store.get_user(self._user(user_id)))

    async def disconnect(self, user_id: str) -> None:
        """Close every stream of the user, on every node."""
        await self.store.publish_disconnect(self._user(user_id))

    @staticmethod
    def user_status(record: UserRecord) -> UserStatus:
        """Turn a store's record into the public status."""
        last_seen = (
            datetime.datetime.fromtimestamp(record.last_seen, datetime.UTC)
            if record.last_seen is not None
            else None
        )
        return UserStatus(
            record.user_id, record.state, record.connections, last_seen, record.pending
        )

    def _user(self, user_id: str) -> str:
        return check_user_id(user_id, max_length=self.limits.max_user_id_length)

    def encode(self, data: object, event: str | None = None) -> bytes:
        """Encode a message's payload once, refusing one over the payload limit.

        Raises:
            InvalidInput: the data or event name cannot be sent.
            PayloadTooLarge: the data is larger than ``limits.max_payload_bytes``.
        """
        payload = events.encode_payload(data, event=event)
        return check_payload(payload, max_bytes=self.limits.max_payload_bytes)

    # -- StoreListener ----------------------------------------------------------------

    def on_event(self, user_id: str, event: events.StoredEvent) -> None:
        """Hand a new event's frame to every local stream of its user."""
        streams = self._streams.get(user_id)
        if not streams:
            return
        data = event.frame()
        key = event.key
        for connection in streams:
            if not connection.deliver(key, data):
                self.drop_slow(connection)
        self._delivered_ids[user_id] = event.id
        self.stats.delivered += len(streams)

    def on_broadcast(self, payload: bytes) -> None:
        """Queue a broadcast for each user connected to this node now."""
        user_ids = list(self._streams)
        if user_ids:
            self._broadcasts.append((user_ids, payload))
            self._broadcast_wakeup.set()

    async def _broadcast_forever(self) -> None:
        # One worker, so broadcasts reach each user in the order they were accepted.
        while True:
            await self._broadcast_wakeup.wait()
            self._broadcast_wakeup.clear()
            await self._drain_broadcasts()

    async def _drain_broadcasts(self) -> None:
        while self._broadcasts:
            user_ids, payload = self._broadcasts[0]
            for start in range(0, len(user_ids), _BROADCAST_CHUNK):
                await self._append_retrying(user_ids[start : start + _BROADCAST_CHUNK], payload)
                await asyncio.sleep(0)  # let publishers and new streams in between chunks
            self._broadcasts.popleft()

    async def _append_retrying(self, user_ids: list[str], payload: bytes) -> None:
        # A broadcast was answered 202 already: a store that is busy or briefly away is
        # waited for (with back-off), not a reason to drop it.
        delay = 0.05
        deadline = time.monotonic() + _BROADCAST_RETRY_SECONDS
        while True:
            try:
                appended = await self.store.append_to_all(user_ids, payload)
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    logger.error("broadcast lost for %d users: %s", len(user_ids), exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            else:
                self.stats.accepted += appended
                return

    def on_disconnect(self, user_id: str) -> None:
        """Close this node's streams of the user."""
        final = events.text_frame(f"User '{user_id}' disconnected", event=events.DISCONNECTED_EVENT)
        for connection in list(self._streams.get(user_id, ())):
            connection.close(final)

    def drop_slow(self, connection: Connection) -> None:
        """Close a stream whose client does not read what it is sent."""
        self.stats.dropped_slow += 1
        logger.info("closing slow consumer of user %r", connection.user_id)
        connection.close()

    # -- front doors --------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams open on this node."""
        return self._open_count

    @property
    def local_users(self) -> int:
        """Users with at least one stream open on this node."""
        return len(self._streams)

    async def open(
        self,
        user_id: str,
        sink: FrameSink,
        *,
        last_event_id: str | None = None,
        expires_at: float | None = None,
    ) -> Connection:
        """Register a stream: greet, replay what the user missed, then go live.

        Without ``last_event_id`` the replay starts after the last event delivered to
        the user (the offline queue). ``expires_at`` (monotonic time) ends the stream
        when a token expires.

        Raises:
            LimitExceeded: too many streams for this user.
            ServerFull: too many streams on this node (a `LimitExceeded`).
            StoreUnavailable: the store cannot be read; nothing was written.
        """
        if self._closing:
            raise StoreUnavailable("the hub is shutting down")
        streams = self._streams.get(user_id)
        if self._open_count >= self.limits.max_connections:
            self.stats.refused += 1
            raise ServerFull("too many open streams on this server")
        if streams is not None and len(streams) >= self.limits.max_connections_per_user:
            self.stats.refused += 1
            raise LimitExceeded("too many open streams for this user")
        connection = Connection(user_id, sink, expires_at=expires_at)
        first = streams is None
        if streams is None:
            streams = self._streams[user_id] = []
        streams.append(connection)
        self._open_count += 1
        try:
            if first:
                await self.store.watch(user_id)
            after = last_event_id
            if after is None:
                after = (await self.store.get_user(user_id)).cursor
            await self._replay(connection, after)
            await self._presence_changed(user_id, wait=True)
        except BaseException:
            self._forget(connection)
            raise
        self.stats.connects += 1
        logger.info("stream opened for user %r (%d open)", user_id, len(streams))
        return connection

    async def _replay(self, connection: Connection, after: str | None) -> None:
        sink = connection.sink
        sink.write(events.greeting_frame(connection.user_id))
        sink.write(events.KEEPALIVE_FRAME)
        first = True
        while True:
            result = await self.store.read_after(connection.user_id, after, limit=self.replay_batch)
            if first and result.reset:
                notice = {"reason": "history_trimmed", "last_event_id": after}
                sink.write(
                    events.frame(
                        None,
                        events.encode_payload(
                            orjson.dumps(notice), event=events.RESET_EVENT, is_json=True
                        ),
                    )
                )
            elif first and after is not None:
                connection.last_key = events.event_key(after)
            first = False
            for event in result.events:
                connection.last_key = event.key
                sink.write(event.frame())
            self.stats.replayed += len(result.events)
            if len(result.events) < self.replay_batch:
                break
            after = result.events[-1].id
        if result.events or after is not None:
            last = result.events[-1].id if result.events else after
            if last is not None:
                self._delivered_ids[connection.user_id] = last
        backlog, connection.backlog = connection.backlog or [], None
        for key, data in backlog:
            if not connection.deliver(key, data):
                self.drop_slow(connection)
                break

    def release(self, connection: Connection) -> None:
        """Forget a stream that ended, for whatever reason. Idempotent."""
        if self._forget(connection):
            connection.closed = True
            self.stats.disconnects += 1
            logger.info("stream closed for user %r", connection.user_id)
            self._presence_dirty.setdefault(connection.user_id, [])
            self._presence_wakeup.set()

    def _forget(self, connection: Connection) -> bool:
        streams = self._streams.get(connection.user_id)
        if streams is None or connection not in streams:
            return False
        streams.remove(connection)
        self._open_count -= 1
        if not streams:
            del self._streams[connection.user_id]
            self._spawn(self._unwatch(connection.user_id), "ssehub-unwatch")
        return True

    async def _unwatch(self, user_id: str) -> None:
        if user_id not in self._streams:
            with contextlib.suppress(StoreUnavailable):
                await self.store.unwatch(user_id)

    # -- presence -------------------------------------------------------------------------

    async def _presence_changed(self, user_id: str, *, wait: bool) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._presence_dirty.setdefault(user_id, []).append(future)
        self._presence_wakeup.set()
        if wait:
            await future

    async def _presence_forever(self) -> None:
        while True:
            await self._presence_wakeup.wait()
            self._presence_wakeup.clear()
            await self._write_presence(list(self._presence_dirty))

    async def _write_presence(self, user_ids: list[str]) -> None:
        for user_id in user_ids:
            waiters = self._presence_dirty.pop(user_id, [])
            count = len(self._streams.get(user_id, ()))
            cursor = self._delivered_ids.get(user_id)
            try:
                await self.store.set_presence(user_id, connections=count, cursor=cursor)
            except StoreUnavailable as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                if not self._closing:
                    self._spawn(self._presence_retry(user_id), "ssehub-presence-retry")
                continue
            if count == 0:
                self._delivered_ids.pop(user_id, None)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _presence_retry(self, user_id: str) -> None:
        await asyncio.sleep(_PRESENCE_RETRY_SECONDS)
        self._presence_dirty.setdefault(user_id, [])
        self._presence_wakeup.set()

    # -- keep-alive -----------------------------------------------------------------------------

    async def _keepalive_forever(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive)
            self._tick()
            user_ids = list(self._streams)
            if user_ids:
                try:
                    await self.store.refresh_presence(user_ids)
                except StoreUnavailable:
                    logger.warning("could not refresh presence: store unavailable")

    def _tick(self) -> None:
        now = time.monotonic()
        for streams in list(self._streams.values()):
            for connection in list(streams):
                if connection.expires_at is not None and now >= connection.expires_at:
                    connection.close(events.text_frame("token expired", event="expired"))
                elif not connection.sink.write(events.KEEPALIVE_FRAME):
                    self.drop_slow(connection)
