"""The hub: a `Messenger` over a store, and the engine both front doors hand streams to.

Delivery path: `send` encodes once, the store appends and gives the id, the store's
listener (`on_event`) builds the frame once and hands it to each open stream of the
user on this node. The hub composes parts of one concept each: the connection registry
(`_registry`), replay (`_replay`), broadcasts (`_broadcasts`), the keep-alive timer
(`_keepalive`), the store's record of streams and cursors (`_store_presence`), presence
events (`presence`) and their SSE feed (`_presence_feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ssehub import events
from ssehub._broadcasts import Broadcasts
from ssehub._keepalive import KeepAlive
from ssehub._presence_feed import PresenceFeed
from ssehub._registry import Registry
from ssehub._replay import replay
from ssehub._signals import chain_shutdown_signals
from ssehub._stats import HubStats
from ssehub._store_presence import StorePresence
from ssehub._tasks import Service, TaskOwner
from ssehub.connection import Connection, FrameSink
from ssehub.exceptions import LimitExceeded, StoreUnavailable
from ssehub.limits import Limits, check_payload, check_user_id
from ssehub.messenger import Message, UserStatus
from ssehub.presence import DEFAULT_OFFLINE_GRACE, Presence, TextPayload
from ssehub.stores._presence import PRESENCE_LOG
from ssehub.stores.base import Store, UserRecord

logger = logging.getLogger("ssehub.hub")

_CLOSE_DRAIN_SECONDS = 5.0


class Hub(Service):
    """Delivers each user's messages to all of their open streams; a `Messenger`.

    Args:
        store: where messages are kept and fanned out.
        keepalive: seconds between keep-alives on every stream (one shared timer).
        limits: input and connection bounds.
        retry_ms: the reconnection time sent to clients when the hub shuts down.
        replay_batch: events read from the store per round trip during replay.
        offline_grace: see `Presence`.
        undelivered_after: see `Presence`.

    Attributes:
        presence: presence events; ``hub.presence.subscribe(listener)``.
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
        self.presence.bind(store)
        self._registry = Registry(self.limits)
        self._streams = self._registry.streams
        self._store_presence = StorePresence(store, self._registry.count, self._spawn)
        self._delivered_ids = self._store_presence.delivered
        # The undelivered check's record of deliveries here; None (nothing to do) when off.
        self._track = self.presence.recent if self.presence.tracks_delivery else None
        self._broadcasts = Broadcasts(store, self._count_appended)
        self._feed = PresenceFeed(
            store, Registry(self.limits), replay_batch=replay_batch, drop_slow=self.drop_slow
        )
        self._timer = KeepAlive(
            keepalive,
            self._registry,
            [self._feed.registry],
            store,
            drop_slow=self.drop_slow,
            heartbeat=self._heartbeat,
        )
        self._announced: set[str] = set()  # users whose streams here presence knows of
        self._watching: dict[str, asyncio.Future[None]] = {}  # users being subscribed to
        self._tasks = TaskOwner()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restore_signals: Callable[[], None] = lambda: None
        store.bind(self)

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the store and the hub's background tasks."""
        self._loop = asyncio.get_running_loop()
        await self.store.start()
        self._spawn(self._timer.run(), "ssehub-keepalive")
        self._spawn(self._store_presence.run(), "ssehub-presence")
        self._spawn(self._broadcasts.run(), "ssehub-broadcast")
        self._spawn(self.presence.run(), "ssehub-presence-events")
        # Inside a server, SIGINT/SIGTERM end the streams first (see ssehub._signals).
        self._restore_signals = chain_shutdown_signals(self.request_shutdown)

    async def close(self) -> None:
        """End every stream with a ``retry:`` hint, flush broadcasts and presence, close."""
        self._restore_signals()
        self.shutdown_streams()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._broadcasts.drain(), _CLOSE_DRAIN_SECONDS)
        self._store_presence.closing = True
        await self._store_presence.flush()
        await self.presence.finish()
        await self._tasks.cancel_all()
        await self.store.close()

    def request_shutdown(self) -> None:
        """Close every stream soon; safe to call from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.shutdown_streams)

    def shutdown_streams(self) -> None:
        """Close every open stream now, telling clients to come back after about retry_ms.

        Each stream gets a hint between half and one and a half times ``retry_ms``
        (`events.spread_retry_frames`), so clients do not all return at the same moment.
        """
        self._closing = True
        finals = events.spread_retry_frames(self.retry_ms)
        self._registry.close_all(finals)
        self._feed.registry.close_all(finals)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)

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
        if self._track is not None:
            self.presence.accepted(items, stored)
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
        if self._broadcasts.full:
            raise StoreUnavailable("too many broadcasts are waiting; try again shortly")
        await self.store.publish_broadcast(bytes(payload))

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
        payload = check_payload(payload, max_bytes=self.limits.max_payload_bytes)
        if self._track is not None and isinstance(data, str):
            return TextPayload(payload)  # so an undelivered event gives back a string
        return payload

    # -- StoreListener ----------------------------------------------------------------

    def on_event(self, user_id: str, event: events.StoredEvent) -> None:
        """Hand a new event's frame to every local stream of its user."""
        streams = self._streams.get(user_id)
        if not streams:
            if user_id == PRESENCE_LOG:
                self._feed.on_event(event)
            return
        data = event.frame()
        key = event.key
        for connection in streams:
            if not connection.deliver(key, data):
                self.drop_slow(connection)
        self._delivered_ids[user_id] = event.id
        self.stats.delivered += len(streams)
        if self._track is not None:
            self._track[user_id] = event.id

    def on_broadcast(self, payload: bytes) -> None:
        """Queue a broadcast for each user connected to this node now."""
        self._broadcasts.add(list(self._streams), payload)

    def _count_appended(self, appended: int) -> None:
        self.stats.accepted += appended

    def on_disconnect(self, user_id: str) -> None:
        """Close this node's streams of the user."""
        final = events.text_frame(f"User '{user_id}' disconnected", event=events.DISCONNECTED_EVENT)
        self._registry.close_key(user_id, final)

    def drop_slow(self, connection: Connection) -> None:
        """Close a stream whose client does not read what it is sent."""
        self.stats.dropped_slow += 1
        logger.info("closing slow consumer of user %r", connection.user_id)
        connection.close()

    # -- front doors --------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams open on this node."""
        return self._registry.open_count + self._feed.registry.open_count

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

        Without ``last_event_id`` the stream gets what no stream of the user received
        (the offline queue), never what another open stream of the user already got.
        ``expires_at`` (monotonic time) ends the stream when a token expires. The
        reserved id of the presence log opens a presence feed stream instead.

        Raises:
            LimitExceeded: too many streams for this user.
            ServerFull: too many streams on this node (a `LimitExceeded`).
            StoreUnavailable: the store cannot be read; nothing was written.
        """
        if self._closing:
            raise StoreUnavailable("the hub is shutting down")
        connection = Connection(user_id, sink, expires_at=expires_at)
        try:
            if user_id == PRESENCE_LOG:
                return await self._feed.open(
                    connection, node_open=self.open_streams, last_event_id=last_event_id
                )
            first = self._registry.add(connection, node_open=self.open_streams)
        except LimitExceeded:
            self.stats.refused += 1
            raise
        try:
            await (self._watch(user_id) if first else self._watched(user_id))
            after = last_event_id
            if after is None:
                after = await self._start_after(user_id, first)
            sink.write(events.greeting_frame(user_id))
            sink.write(events.KEEPALIVE_FRAME)
            last, replayed = await replay(
                self.store, connection, after, batch=self.replay_batch, drop_slow=self.drop_slow
            )
            self.stats.replayed += replayed
            self._note_replayed(user_id, last)
            await self._store_presence.changed(user_id)
        except BaseException:
            self._forget(connection)
            raise
        if user_id not in self._announced:
            self._announced.add(user_id)
            self.presence.opened(user_id)
        self.stats.connects += 1
        logger.info("stream opened for user %r (%d open)", user_id, len(self._streams[user_id]))
        return connection

    async def _watch(self, user_id: str) -> None:
        # Later streams of the user wait for the subscription too (`_watched`): what
        # they read of the history must come after it, or what is published between
        # their read and the subscription would reach none of them.
        if self.store.watch_at_once:  # no later stream can come in between
            await self.store.watch(user_id)
            return
        done = asyncio.get_running_loop().create_future()
        self._watching[user_id] = done
        try:
            await self.store.watch(user_id)
        except BaseException:
            done.set_exception(StoreUnavailable("the store could not watch the user"))
            done.exception()  # retrieved: nobody may be waiting
            raise
        else:
            done.set_result(None)
        finally:
            if self._watching.get(user_id) is done:
                del self._watching[user_id]

    async def _watched(self, user_id: str) -> None:
        pending = self._watching.get(user_id)
        if pending is not None:
            await asyncio.shield(pending)

    async def _start_after(self, user_id: str, first: bool) -> str | None:
        # Another stream of the user here got everything up to the newest delivered
        # id; with none here, the ledger knows whether one is open on another node.
        if not first:
            delivered = self._delivered_ids.get(user_id)
            if delivered is not None:
                return delivered
        return await self.presence.start_after(user_id)

    def _note_replayed(self, user_id: str, last: str | None) -> None:
        if last is None:
            return
        known = self._delivered_ids.get(user_id)
        if known is None or events.event_key(known) < events.event_key(last):
            self._delivered_ids[user_id] = last
        if self._track is not None:  # a replay in time is a delivery
            self._track[user_id] = self._delivered_ids[user_id]

    def _heartbeat(self, user_ids: list[str]) -> None:
        # The tick listed ``user_ids`` before awaiting the store: a user whose last
        # stream closed since then is already told closed, and must not be told open.
        announced = self._announced
        self.presence.heartbeat([user_id for user_id in user_ids if user_id in announced])

    def release(self, connection: Connection) -> None:
        """Forget a stream that ended, for whatever reason. Idempotent."""
        if connection.user_id == PRESENCE_LOG:
            if self._feed.release(connection):
                self._spawn(self._feed.unwatch_if_idle(), "ssehub-unwatch")
            return
        if self._forget(connection):
            connection.closed = True
            self.stats.disconnects += 1
            logger.info("stream closed for user %r", connection.user_id)
            self._store_presence.mark(connection.user_id)

    def _forget(self, connection: Connection) -> bool:
        last = self._registry.remove(connection)
        if last is None:
            return False
        if last:
            self._spawn(self._unwatch(connection.user_id), "ssehub-unwatch")
            if connection.user_id in self._announced:
                self._announced.discard(connection.user_id)
                self.presence.closed(connection.user_id)
        return True

    async def _unwatch(self, user_id: str) -> None:
        if user_id not in self._streams:
            with contextlib.suppress(StoreUnavailable):
                await self.store.unwatch(user_id)
