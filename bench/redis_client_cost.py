"""CPU the Redis store's client spends packing commands and reading pub/sub messages.

Usage: ``python bench/redis_client_cost.py [--redis URL] [--connects N] [--repeats R]``

Packing: a hub in this process on the Redis store opens ``--connects`` streams (256 at
a time, as the benchmark's load tool does) and publishes 100 batches of 100 messages;
every command its connections pack is recorded, then packed again by redis-py's own
packer and by the store's (`_redis_client.fast_packing`), best of ``--repeats``; the
figures are per connect and per message.

Reading: 20,000 pub/sub messages of 100 bytes are published to a channel one
connection subscribed to and left in its socket; then read one ``read_response``
call each (redis-py's way) and with the store's `replies_reader`, best of
``--repeats``, per message.

Calls: Python function calls (cProfile's count) per connect, for ``--connects``
streams opened 256 at a time, and per delivery, for 20,000 messages published in
batches of 100 to those streams: the hub's and the store's work together, and a
figure that the machine's load does not move.

CPU time of this process (``time.process_time``): steadier than wall-clock time on a
busy machine. The Redis database named by ``--redis`` is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from ssehub.hub import Hub
from ssehub.stores import open_store
from ssehub.stores._redis_client import store_connection
from ssehub.stores._redis_subscriber import replies_reader

MESSAGES = 20_000


class Sink:
    def write(self, data: bytes) -> bool:
        return True

    def close(self, final: bytes | None = None) -> None:
        pass


async def record_commands(url: str, connects: int) -> dict[str, list[tuple[Any, ...]]]:
    """The commands a burst of connects, then 10,000 published messages, pack."""
    store = open_store(url)
    cls = store._client.connection_pool.connection_class  # type: ignore[attr-defined]
    packer = cls.pack_command
    recorded: dict[str, list[tuple[Any, ...]]] = {"connect": [], "message": [], "rest": []}
    phase = ["connect"]

    def recording(self: Any, *args: Any) -> list[bytes]:
        recorded[phase[0]].append(args)
        packed: list[bytes] = packer(self, *args)
        return packed

    cls.pack_command = recording
    hub = Hub(store, keepalive=30.0)
    async with hub.running():
        opened = []
        for start in range(0, connects, 256):
            users = range(start, min(connects, start + 256))
            opened += await asyncio.gather(*(hub.open(f"u{n}", Sink()) for n in users))
        await asyncio.sleep(0.1)  # presence writes gathered for 20 ms
        phase[0] = "message"
        for batch in range(100):
            items = [
                (f"u{(batch * 100 + i) % connects}", hub.encode("x" * 100)) for i in range(100)
            ]
            await hub.send_encoded(items)
        phase[0] = "rest"
        for connection in opened:
            hub.release(connection)
    cls.pack_command = packer
    return recorded


def best(repeats: int, run: Any) -> float:
    spent = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        spent.append(time.process_time() - started)
    return min(spent)


def packing(recorded: dict[str, list[tuple[Any, ...]]], connects: int, repeats: int) -> None:
    plain, fast = Connection(), store_connection(Connection)()
    for name, count in (("connect", connects), ("message", 10_000)):
        commands = recorded[name]
        arguments = sum(len(command) for command in commands) / count
        for label, conn in (("redis-py", plain), ("store", fast)):
            spent = best(
                repeats,
                lambda conn=conn, commands=commands: [conn.pack_command(*c) for c in commands],
            )
            print(
                f"packing, per {name} ({arguments:.1f} arguments): {label} "
                f"{spent / count * 1e6:.2f} µs"
            )


async def reading_once(url: str, batched: bool) -> float:
    channel = f"ssehub-bench:{uuid.uuid4().hex}"
    client = aioredis.Redis.from_url(url, protocol=2)
    conn = store_connection(Connection)(**client.connection_pool.connection_kwargs)
    await conn.connect()
    await conn.send_command("SUBSCRIBE", channel)
    await conn.read_response()
    for start in range(0, MESSAGES, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for n in range(start, start + 1000):
                pipe.publish(channel, b"1764518400000-%d " % n + b"x" * 100)
            await pipe.execute()
    await client.aclose()
    read = replies_reader(conn)
    got = 0
    started = time.process_time()
    while got < MESSAGES:
        if batched:
            got += len(await read())
        else:
            await conn.read_response()
            got += 1
    spent = time.process_time() - started
    await conn.disconnect()
    return spent


def total_calls(profile: cProfile.Profile) -> int:
    count: int = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    return count


async def calls(url: str, connects: int) -> None:
    """Python function calls per connect and per delivery."""
    hub = Hub(open_store(url), keepalive=30.0)
    async with hub.running():
        await asyncio.gather(*(hub.open(f"warm{n}", Sink()) for n in range(50)))
        await asyncio.sleep(0.1)
        profile = cProfile.Profile()
        profile.enable()
        for start in range(0, connects, 256):
            numbers = range(start, min(connects, start + 256))
            await asyncio.gather(*(hub.open(f"u{n}", Sink()) for n in numbers))
        await asyncio.sleep(0.1)  # presence writes gathered for 20 ms
        profile.disable()
        print(f"calls per connect: {total_calls(profile) / connects:.0f}")
        before = hub.stats.delivered
        profile = cProfile.Profile()
        profile.enable()
        for batch in range(MESSAGES // 100):
            users = [f"u{(batch * 100 + i) % connects}" for i in range(100)]
            await hub.send_encoded([(user, hub.encode("x" * 100)) for user in users])
        while hub.stats.delivered - before < MESSAGES:  # noqa: ASYNC110
            await asyncio.sleep(0.002)  # delivered through pub/sub, a little later
        profile.disable()
        print(f"calls per delivery: {total_calls(profile) / MESSAGES:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).flushdb()
    packing(await record_commands(args.redis, args.connects), args.connects, args.repeats)
    for label, batched in (("read_response per message", False), ("replies_reader", True)):
        spent = min([await reading_once(args.redis, batched) for _ in range(args.repeats)])
        print(f"reading, per pub/sub message: {label} {spent / MESSAGES * 1e6:.2f} µs")
    redis.Redis.from_url(args.redis).flushdb()
    await calls(args.redis, args.connects)
    redis.Redis.from_url(args.redis).flushdb()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())  # the loop `ssehub serve` runs on
