"""The Redis store's subscriber: the one pub/sub connection of a node.

It subscribes to the channels of the users this node has streams for, plus the
broadcast and control channels, and hands what arrives to the store's listener in id
order. When the connection is lost it reconnects with back-off, subscribes again, and
reads from the streams what was published meanwhile before it goes on (see
ARCHITECTURE.md, "Redis store and scale-out").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ssehub._tasks import cancel_and_wait
from ssehub.events import StoredEvent
from ssehub.exceptions import StoreUnavailable
from ssehub.stores._redis_batch import StepBatch
from ssehub.stores._redis_keys import Keys
from ssehub.stores.base import StoreListener

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

_READER: type[Any] | None
try:
    from hiredis import Reader as _READER
except ImportError:  # pragma: no cover - the redis extra installs it
    _READER = None

logger = logging.getLogger("ssehub.stores.redis")

Key = tuple[int, int]
BROADCAST_KEEP: Final = 1000  # broadcasts kept for nodes that reconnect
_FILL_USERS: Final = 100  # users read per round trip when filling a gap


class BroadcastPayload(bytes):
    """A broadcast's payload as handed to the listener, carrying the broadcast's id.

    The hub of every node appends a broadcast for the users connected to it; a user
    connected to two nodes would get it twice. Handed back to the store's
    ``append_many``, this payload is appended at most once per user (see ``APPEND`` in
    the scripts).
    """

    broadcast_id: str


def format_id(key: Key) -> str:
    """A stream id from its key."""
    return f"{key[0]}-{key[1]}"


def parse_id(raw: bytes) -> Key:
    """The key of a stream id as Redis sends it."""
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


def replies_reader(conn: AbstractConnection) -> Callable[[], Awaitable[list[Any]]]:
    """A reader of a connection's replies: every complete one it holds, at least one.

    A burst of published events reaches the subscriber as many replies in one socket
    read; redis-py parses them one ``read_response`` call each (a few µs of calls and
    checks per message). With hiredis, its reader hands out every reply the read
    completed at once, and a read from the socket happens only when none is left. An
    error reply is raised, as ``read_response`` raises it. Without hiredis, one reply a
    call through ``read_response``.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    fill = getattr(parser, "read_from_socket", None)
    if _READER is None or not isinstance(reader, _READER) or fill is None:

        async def one() -> list[Any]:
            return [await conn.read_response()]

        return one

    async def every() -> list[Any]:
        replies: list[Any] = []
        while True:
            reply = reader.gets()
            if reply is False or type(reply) is object:  # hiredis: not enough data
                if replies:
                    return replies
                await fill()
            elif isinstance(reply, BaseException):
                raise reply
            else:
                replies.append(reply)

    return every


class Subscriber:
    """A node's subscriptions on one connection; started and closed by the store.

    Args:
        client: the store's client (for gap fills, and the settings of the connection).
        keys: the store's key names.
        node_channel: this node's own channel (its share of each broadcast), or ''.
        errors: the exceptions that mean Redis cannot be reached.
        fill_limit: events read per user when filling a gap (the retention count).
        reconnect_max: longest pause between reconnection attempts, in seconds.
        ping_interval: seconds between pings; three silent intervals mean a lost link.
        timeout: seconds to wait for a connection or a subscription to be confirmed.
        newest: the id of the newest event of each of a list of users (None for
            none), read in one go (the store's ``NEWEST`` script).
        connect: makes the connection (default: one like the client's pooled ones).
        sharded: use sharded pub/sub (``SSUBSCRIBE``; one slot per command).
        broadcasts: subscribe to the broadcast and control channels (one subscriber of
            a node does).
        on_moved: called with a user whose channel Redis unsubscribed on its own (its
            slot moved to another master); the user is no longer watched here.
    """

    def __init__(
        self,
        client: Redis,
        *,
        keys: Keys,
        node_channel: str,
        errors: tuple[type[BaseException], ...],
        fill_limit: int,
        reconnect_max: float,
        ping_interval: float,
        timeout: float,
        newest: Callable[[list[str]], Awaitable[list[Any]]],
        connect: Callable[[], AbstractConnection] | None = None,
        sharded: bool = False,
        broadcasts: bool = True,
        on_moved: Callable[[str, Key | None], None] | None = None,
    ) -> None:
        self.listener: StoreListener | None = None
        self.up = asyncio.Event()
        self._client = client
        self._keys = keys
        self._errors = errors
        self._fill_limit = fill_limit
        self._reconnect_max = reconnect_max
        self._ping_interval = ping_interval
        self._timeout = timeout
        self._connect = connect or self._pooled_connection
        self._on_moved = on_moved
        prefix = b"s" if sharded else b""
        self._subscribe_cmd = (prefix + b"subscribe").upper().decode()
        self._unsubscribe_cmd = (prefix + b"unsubscribe").upper().decode()
        self._message = prefix + b"message"
        self._confirmed = prefix + b"subscribe"
        self._dropped = prefix + b"unsubscribe"
        self._sharded = sharded
        self._user_channel = keys.user_channel_head.encode()
        self._broadcasts = broadcasts
        self._broadcast_channel = keys.broadcast_channel.encode()
        self._control = keys.control_channel.encode()
        self._node_channel = node_channel.encode()
        # Users watched by this node -> newest id handed to the listener (or known to
        # be older than anything the subscription will bring): where a gap fill starts.
        self._watched: dict[str, Key | None] = {}
        self._users: dict[bytes, str] = {}  # channel -> user, for the watched users
        # Users whose gap is being read after a move: live messages wait until it is.
        self._held: dict[str, list[tuple[bytes, bytes]]] = {}
        self._last_broadcast: Key | None = None
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._sub_lock = asyncio.Lock()
        # (Un)subscribes of this loop step, for `_outgoing_conn` (see `_send_soon`).
        self._outgoing: list[list[Any]] = []
        self._outgoing_conn: AbstractConnection | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._newest = StepBatch[str, Any](newest)
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start connecting; wait a little for it, but return even if Redis is down."""
        self._task = asyncio.create_task(self._forever(), name="ssehub-redis-sub")
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self.up.wait()
        except TimeoutError:
            logger.warning("redis is not answering; running degraded until it does")

    async def close(self) -> None:
        """Stop the reader task and drop the connection."""
        await cancel_and_wait(self._task)
        self._task = None

    def is_up(self) -> bool:
        """Whether the subscription is connected and caught up."""
        return self.up.is_set()

    def watching(self) -> bool:
        """Whether this subscriber watches any user."""
        return bool(self._watched)

    def take_broadcasts_from(self, other: Subscriber) -> None:
        """Go on from the last broadcast another subscriber handed on (it moved here)."""
        self._last_broadcast = other._last_broadcast

    async def watch(self, user_id: str, last: Key | tuple[()] | None = ()) -> None:
        """Subscribe to a user's channel; return once Redis confirmed it.

        Args:
            user_id: the user.
            last: the newest id handed on for the user, when another subscriber of
                the node watched it until now (its slot moved): what was published
                after it is read from the stream once subscribed. By default, the
                user's newest id.

        Raises:
            StoreUnavailable: not connected, or Redis did not confirm in time.
        """
        channel = self._keys.channel(user_id).encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        start: Key | None
        if not isinstance(last, tuple) or last:
            start = last
        else:
            try:
                # Where a gap fill would start: taken before subscribing, so nothing
                # published after it can be missed (what is seen twice, the hub drops).
                newest: Any = await self._newest(user_id)
            except self._errors as exc:
                raise StoreUnavailable(f"redis: {exc or type(exc).__name__}") from exc
            start = parse_id(newest) if newest else None
        async with self._sub_lock:
            conn = self._conn
            if conn is None:
                raise StoreUnavailable("redis pub/sub is reconnecting")
            if user_id not in self._watched:
                self._watched[user_id] = start
                self._users[channel] = user_id
                if last != ():
                    self._held[user_id] = []
            self._pending.setdefault(channel, []).append(future)
            self._send_soon(conn, self._subscribe_cmd, channel)
        try:
            async with asyncio.timeout(self._timeout):
                await future
        except (StoreUnavailable, TimeoutError) as exc:
            async with self._sub_lock:
                self._abandon(channel, future, user_id)
                await self._unsubscribe(channel)
            raise StoreUnavailable("redis did not confirm the subscription") from exc
        if user_id in self._held:
            try:
                await self._fill_users([user_id])
            except self._errors as exc:
                async with self._sub_lock:
                    self._abandon(channel, future, user_id)
                    await self._unsubscribe(channel)
                raise StoreUnavailable(f"redis: {exc or type(exc).__name__}") from exc
            finally:
                held = self._held.pop(user_id, [])
            for event_id, payload in held:
                self._deliver(user_id, event_id, payload)

    def _abandon(self, channel: bytes, future: asyncio.Future[None], user_id: str) -> None:
        waiting = self._pending.get(channel, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._pending.pop(channel, None)
        self._watched.pop(user_id, None)
        self._users.pop(channel, None)
        self._held.pop(user_id, None)

    async def unwatch(self, user_id: str) -> Key | tuple[()] | None:
        """Stop receiving a user's events; return where a gap fill would start (or ())."""
        async with self._sub_lock:
            last = self._watched.pop(user_id, ())
            if last != ():
                channel = self._keys.channel(user_id).encode()
                self._users.pop(channel, None)
                await self._unsubscribe(channel)
            return last

    async def _unsubscribe(self, channel: bytes) -> None:
        # Best effort: a lost connection drops every subscription anyway, and the
        # next one subscribes only to the users still watched.
        if self._conn is not None:
            self._send_soon(self._conn, self._unsubscribe_cmd, channel)

    def _send_soon(self, conn: AbstractConnection, command: str, channel: bytes) -> None:
        """Queue a (un)subscribe; those of one loop step go out in one write, in order.

        Streams opening at once then cost Redis one ``SUBSCRIBE`` of many channels
        (on one server) rather than one command and one write each.
        """
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._send_outgoing, conn)
        elif self._outgoing_conn is not conn:
            self._outgoing.clear()  # for a connection lost since: it subscribes anew
            asyncio.get_running_loop().call_soon(self._send_outgoing, conn)
        self._outgoing_conn = conn
        if self._outgoing and self._outgoing[-1][0] == command and not self._sharded:
            self._outgoing[-1].append(channel)  # a sharded one takes one slot per command
        else:
            self._outgoing.append([command, channel])

    def _send_outgoing(self, conn: AbstractConnection) -> None:
        if self._outgoing_conn is not conn or not self._outgoing:
            return
        commands, self._outgoing = self._outgoing, []
        task = asyncio.get_running_loop().create_task(self._send(conn, commands))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, conn: AbstractConnection, commands: list[list[Any]]) -> None:
        async with self._sub_lock:
            if conn is not self._conn:
                return  # lost meanwhile: the next connection subscribes to every user
            try:
                packed = conn.pack_commands(commands)
                await conn.send_packed_command(packed, check_health=False)
            except self._errors as exc:
                failed = StoreUnavailable(f"redis: {exc or type(exc).__name__}")
                for command in commands:
                    if command[0] != self._subscribe_cmd:
                        continue
                    for channel in command[1:]:
                        for future in self._pending.get(channel, []):
                            if not future.done():
                                future.set_exception(failed)

    async def _forever(self) -> None:
        delay = 0.05
        while True:
            conn = self._connect()
            try:
                await self._subscribe(conn)
                delay = 0.05
                await self._read_forever(conn)
            except self._errors as exc:
                if self.up.is_set():
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

    def _pooled_connection(self) -> AbstractConnection:
        pool = self._client.connection_pool
        # No socket timeout on the subscriber: it is idle by design, and its health
        # is checked by pings instead.
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    def _lost(self, conn: AbstractConnection) -> None:
        self.up.clear()
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
            channels = [self._broadcast_channel, self._control] if self._broadcasts else []
            channels += [self._node_channel] if self._node_channel else []
            channels += self._users
            if self._sharded:  # a sharded subscription takes channels of one slot
                for channel in channels:
                    await conn.send_command(self._subscribe_cmd, channel, check_health=False)
            elif channels:
                await conn.send_command(self._subscribe_cmd, *channels, check_health=False)
            self._conn = conn
        # Confirmations come before any message published after them.
        for _ in channels:
            reply = await self._read(conn)
            if reply[0] != self._confirmed:
                raise StoreUnavailable(f"unexpected reply to subscribe: {reply[0]!r}")
        await self._fill_gaps()
        self.up.set()
        logger.info("redis pub/sub connected (%d users watched)", len(self._watched))

    async def _read(self, conn: AbstractConnection) -> list[bytes]:
        async with asyncio.timeout(self._ping_interval * 3):
            reply: list[bytes] = await conn.read_response()
        return reply

    async def _read_forever(self, conn: AbstractConnection) -> None:
        pinger = asyncio.create_task(self._ping_forever(conn), name="ssehub-redis-ping")
        loop = asyncio.get_running_loop()
        interval = self._ping_interval
        silence = 3 * interval  # a healthy link answers a ping every interval
        try:
            # One deadline for the whole loop, moved on at most once an interval: a
            # timeout per message cost more than the message's own handling.
            read = replies_reader(conn)
            async with asyncio.timeout_at(loop.time() + silence) as deadline:
                while True:
                    replies = await read()
                    now = loop.time()
                    when = deadline.when()
                    if when is not None and when - now < silence - interval:
                        deadline.reschedule(now + silence)
                    for reply in replies:
                        try:
                            self._dispatch(reply)
                        except Exception:  # a listener's bug must not stop the others
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
        if kind == self._message:
            channel, data = reply[1], reply[2]
            user_id = self._users.get(channel)
            if user_id is not None:
                event_id, _, payload = data.partition(b" ")
                self._deliver(user_id, event_id, payload)
            elif channel == self._node_channel:
                self._deliver_share(data)
            elif channel == self._broadcast_channel:
                event_id, _, payload = data.partition(b" ")
                self._deliver_broadcast(event_id, payload)
            elif channel == self._control and self.listener is not None:
                self.listener.on_disconnect(data.decode())
        elif kind == self._dropped and reply[1] in self._users and self._on_moved:
            # Redis dropped a sharded subscription by itself: the slot moved away.
            user_id = self._users.pop(reply[1])
            self._on_moved(user_id, self._watched.pop(user_id, None))
        elif kind == self._confirmed:
            waiting = self._pending.get(reply[1])
            if waiting:
                future = waiting.pop(0)
                if not waiting:
                    del self._pending[reply[1]]
                if not future.done():
                    future.set_result(None)

    def _deliver(
        self, user_id: str, event_id: bytes, payload: bytes, event: StoredEvent | None = None
    ) -> None:
        # `event`, when given, is the event of `event_id` and `payload`, shared by users.
        if self._held and user_id in self._held:
            self._held[user_id].append((event_id, payload))
            return
        last = self._watched.get(user_id, ())
        if last == ():
            return
        key = parse_id(event_id) if event is None else event.key
        if last is not None and key <= last:
            return
        self._watched[user_id] = key
        if self.listener is not None:
            if event is None:
                event = StoredEvent(event_id.decode(), payload, key)
            self.listener.on_event(user_id, event)

    def _deliver_share(self, data: bytes) -> None:
        # "<count> <shared id>\n", count lines "<id> <user>" (no id: the shared one),
        # then the payload (APPEND_ALL). Users of the shared id get one event, whose
        # frame is built once.
        head, _, rest = data.partition(b"\n")
        count, _, shared_id = head.partition(b" ")
        lines = rest.split(b"\n", int(count))
        payload = lines.pop()
        shared = StoredEvent(shared_id.decode(), payload, parse_id(shared_id))
        deliver = self._deliver
        for line in lines:
            event_id, _, user = line.partition(b" ")
            if event_id:
                deliver(user.decode(), event_id, payload)
            else:
                deliver(user.decode(), shared_id, payload, shared)

    def _deliver_broadcast(self, event_id: bytes, payload: bytes) -> None:
        key = parse_id(event_id)
        if self._last_broadcast is not None and key <= self._last_broadcast:
            return
        self._last_broadcast = key
        if self.listener is not None:
            tagged = BroadcastPayload(payload)
            tagged.broadcast_id = event_id.decode()
            self.listener.on_broadcast(tagged)

    async def _fill_gaps(self) -> None:
        """Hand the listener what was published while no subscription was open."""
        broadcasts = self._keys.broadcasts
        if not self._broadcasts:
            pass
        elif self._last_broadcast is None:
            newest: Any = await self._client.xrevrange(broadcasts, count=1)
            self._last_broadcast = parse_id(newest[0][0]) if newest else (0, 0)
        else:
            rows: Any = await self._client.xrange(
                broadcasts, min=f"({format_id(self._last_broadcast)}", count=BROADCAST_KEEP
            )
            for event_id, fields in rows:
                self._deliver_broadcast(event_id, fields[b"p"])
        await self._fill_users(list(self._watched))

    async def _fill_users(self, user_ids: list[str]) -> None:
        """Hand the listener what each user got after the last id handed on."""
        maxlen = self._fill_limit
        for start in range(0, len(user_ids), _FILL_USERS):
            chunk = [u for u in user_ids[start : start + _FILL_USERS] if u in self._watched]
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id in chunk:
                    last = self._watched[user_id]
                    after = f"({format_id(last)}" if last is not None else "-"
                    pipe.xrange(self._keys.stream(user_id), min=after, count=maxlen)
                results = await pipe.execute()
            for user_id, rows in zip(chunk, results, strict=True):
                held = self._held.pop(user_id, None)
                for event_id, fields in rows:
                    self._deliver(user_id, event_id, fields[b"p"])
                if held is not None:
                    self._held[user_id] = held
