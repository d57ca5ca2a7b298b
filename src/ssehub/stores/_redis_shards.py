"""A node's subscriptions on a Redis Cluster: one sharded pub/sub connection per master.

A user's channel lives in the user's hash slot, so it is subscribed (``SSUBSCRIBE``)
on the master that owns that slot, through a `Subscriber` of that master; broadcasts
and disconnects come through one more `Subscriber`, on the master of the ``{b}`` slot.
Every ``ping_interval`` (and at once when Redis drops a subscription because its slot
moved, or a connection is lost) the slot map is read again (``CLUSTER SLOTS``); a user
whose slot now has another master is moved there: subscribed on the new master, then
what was published since the last id handed on is read from the user's stream. So a
resharding or a failover inside the cluster delays live delivery, and loses nothing
that the new master holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ssehub._tasks import cancel_and_wait
from ssehub.exceptions import StoreUnavailable
from ssehub.stores._redis_keys import Keys, slot
from ssehub.stores._redis_subscriber import Key, Subscriber
from ssehub.stores.base import StoreListener

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection

logger = logging.getLogger("ssehub.stores.redis")

Address = tuple[str, int]


class ShardedSubscriber:
    """The subscriptions of a node on a cluster; the same interface as `Subscriber`.

    Args:
        client: the store's cluster client.
        keys: the store's key names.
        errors: the exceptions that mean Redis cannot be reached.
        fill_limit: events read per user when filling a gap.
        reconnect_max: longest pause between reconnection attempts, in seconds.
        ping_interval: seconds between pings, and between reads of the slot map.
        timeout: seconds to wait for a connection or a subscription.
        newest: reads the newest id of each of a list of users (see `Subscriber`).
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        keys: Keys,
        errors: tuple[type[BaseException], ...],
        fill_limit: int,
        reconnect_max: float,
        ping_interval: float,
        timeout: float,
        newest: Callable[[list[str]], Awaitable[list[Any]]],
    ) -> None:
        self._listener: StoreListener | None = None
        self._client = client
        self._keys = keys
        self._errors = errors
        self._settings: dict[str, Any] = {
            "errors": errors,
            "fill_limit": fill_limit,
            "reconnect_max": reconnect_max,
            "ping_interval": ping_interval,
            "timeout": timeout,
            "newest": newest,
        }
        self._interval = ping_interval
        self._timeout = timeout
        self._slots: list[tuple[int, int, Address]] = []  # (first, last, master)
        self._shards: dict[Address, Subscriber] = {}
        self._owner: dict[str, Address] = {}  # watched user -> the shard watching it
        self._orphans: dict[str, Key | None] = {}  # users to move, with their last id
        self._broadcasts: tuple[Address, Subscriber] | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # a round of `_follow` ended
        self._wake = asyncio.Event()  # a subscription moved: follow the slots now
        self._task: asyncio.Task[None] | None = None
        self._probe: tuple[Address, AbstractConnection] | None = None  # reads the slot map

    @property
    def listener(self) -> StoreListener | None:
        return self._listener

    @listener.setter
    def listener(self, listener: StoreListener | None) -> None:
        self._listener = listener
        for shard in self._all_shards():
            shard.listener = listener

    def _all_shards(self) -> list[Subscriber]:
        shards = list(self._shards.values())
        if self._broadcasts is not None:
            shards.append(self._broadcasts[1])
        return shards

    def is_up(self) -> bool:
        """Whether every subscription this node needs is connected and caught up."""
        return (
            self._broadcasts is not None
            and not self._orphans
            and all(shard.is_up() for shard in self._all_shards())
        )

    async def start(self) -> None:
        """Read the slot map and connect; wait a little, but return even if Redis is down."""
        self._task = asyncio.create_task(self._follow(), name="ssehub-redis-slots")
        try:
            async with asyncio.timeout(self._timeout * 2):
                while not self.is_up():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            logger.warning("redis cluster is not answering; running degraded until it does")

    async def close(self) -> None:
        """Stop following the slot map, and every subscriber."""
        await cancel_and_wait(self._task)
        self._task = None
        await self._drop_probe()
        for shard in self._all_shards():
            await shard.close()
        self._shards.clear()
        self._broadcasts = None

    # -- users ----------------------------------------------------------------------

    async def watch(self, user_id: str) -> None:
        """Subscribe to a user's channel on the master of its slot.

        Raises:
            StoreUnavailable: the slot's master cannot be reached.
        """
        async with self._lock:  # one subscriber per master, however many watch at once
            address = self._master_of(self._keys.channel(user_id))
            shard = await self._shard(address)
        # Not under the lock, so streams opening at once wait on Redis side by side. A
        # move of the slot meanwhile is seen by the next round of `_follow`.
        await shard.watch(user_id)
        self._owner[user_id] = address

    async def unwatch(self, user_id: str) -> None:
        """Stop receiving a user's events."""
        async with self._lock:
            self._orphans.pop(user_id, None)
            address = self._owner.pop(user_id, None)
            shard = self._shards.get(address) if address is not None else None
            if shard is not None:
                await shard.unwatch(user_id)

    def _moved(self, user_id: str, last: Key | None) -> None:
        # Redis unsubscribed the user by itself: its slot has another master now.
        self._owner.pop(user_id, None)
        self._orphans[user_id] = last
        self._wake.set()

    # -- the slot map ---------------------------------------------------------------

    def _master_of(self, key: str) -> Address:
        wanted = slot(key)
        for first, last, address in self._slots:
            if first <= wanted <= last:
                return address
        raise StoreUnavailable(f"no redis master serves slot {wanted} (yet)")

    async def _shard(self, address: Address) -> Subscriber:
        shard = self._shards.get(address)
        if shard is None:
            shard = self._new(address, broadcasts=False)
            self._shards[address] = shard
            await shard.start()
        return shard

    def _new(self, address: Address, *, broadcasts: bool) -> Subscriber:
        shard = Subscriber(
            self._client,  # type: ignore[arg-type]
            keys=self._keys,
            node_channel="",
            connect=self._connector(address),
            sharded=True,
            broadcasts=broadcasts,
            on_moved=self._moved,
            **self._settings,
        )
        shard.listener = self._listener
        return shard

    def _connector(self, address: Address) -> Callable[[], AbstractConnection]:
        # Settings as the cluster client's own connections have them (any node's).
        model = next(iter(self._client.nodes_manager.startup_nodes.values()))
        kwargs = {**model.connection_kwargs, "socket_timeout": None}
        connection_class = model.connection_class
        host, port = address

        def connect() -> AbstractConnection:
            connection: AbstractConnection = connection_class(
                **{**kwargs, "host": host, "port": port}
            )
            return connection

        return connect

    async def _read_slots(self) -> list[tuple[int, int, Address]]:
        """The slot map, from the node asked last time, or the first other that answers.

        One connection is kept for this, so following the map costs one command a
        ping interval, not a connection.
        """
        candidates = [address for _, _, address in self._slots]
        nodes = [*self._client.get_nodes(), *self._client.nodes_manager.startup_nodes.values()]
        candidates += [(node.host, int(node.port)) for node in nodes]
        if self._probe is not None:
            candidates.insert(0, self._probe[0])
        for address in dict.fromkeys(candidates):
            if self._probe is None or self._probe[0] != address:
                await self._drop_probe()
                self._probe = (address, self._connector(address)())
            connection = self._probe[1]
            try:
                async with asyncio.timeout(self._timeout):
                    if not connection.is_connected:
                        await connection.connect()  # type: ignore[no-untyped-call]
                    await connection.send_command("CLUSTER", "SLOTS", check_health=False)
                    reply: Any = await connection.read_response()
            except self._errors:  # TimeoutError among them
                await self._drop_probe()
                continue
            slots = [
                (int(row[0]), int(row[1]), (row[2][0].decode() or address[0], int(row[2][1])))
                for row in reply
            ]
            if slots:
                return sorted(slots)
        raise StoreUnavailable("no redis cluster node answers")

    async def _drop_probe(self) -> None:
        if self._probe is not None:
            connection = self._probe[1]
            self._probe = None
            with contextlib.suppress(*self._errors):
                await connection.disconnect()

    async def _follow(self) -> None:
        while True:
            try:
                slots = await self._read_slots()
                async with self._lock:
                    await self._rebalance(slots)
            except StoreUnavailable as exc:
                logger.debug("redis cluster slot map: %s", exc)
            except Exception:  # keep following whatever happened; retry next interval
                logger.exception("following the redis cluster slot map failed")
            self._changed.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()  # early when Redis moved a subscription
            self._wake.clear()

    async def _rebalance(self, slots: list[tuple[int, int, Address]]) -> None:
        """Move every user, and the broadcasts, to the master that owns them now."""
        self._slots = slots
        broadcasts = self._master_of(self._keys.broadcasts)
        if self._broadcasts is None or self._broadcasts[0] != broadcasts:
            old = self._broadcasts
            shard = self._new(broadcasts, broadcasts=True)
            if old is not None:  # go on from the last broadcast handed on
                shard.take_broadcasts_from(old[1])
                await old[1].close()
            self._broadcasts = (broadcasts, shard)
            await shard.start()
        for user_id, address in list(self._owner.items()):
            if self._master_of(self._keys.channel(user_id)) != address:
                self._orphans[user_id] = await self._shards[address].unwatch(user_id) or None
                del self._owner[user_id]
        for user_id, last in list(self._orphans.items()):
            address = self._master_of(self._keys.channel(user_id))
            try:
                shard = await self._shard(address)
                await shard.watch(user_id, last)
            except StoreUnavailable:
                continue  # the next round tries again from the same id
            self._owner[user_id] = address
            del self._orphans[user_id]
        for address, shard in list(self._shards.items()):
            if not shard.watching() and address not in {a for _, _, a in slots}:
                await shard.close()
                del self._shards[address]
