"""What a Redis failover loses: messages Redis accepted that the new master never had.

    python bench/redis_failover.py [--tasks N] [--seconds S]

Starts a master, a replica and three Sentinels (``redis+sentinel://``), then a cluster
of three masters with a replica each (``redis+cluster://``), on free loopback ports.
For each: N tasks append one message at a time as fast as they can (each to a user of
its own), the master of the first task's user is killed with SIGKILL after S/2 seconds,
and the tasks go on (a refused append is counted, not retried) until S seconds after
the new master answers. Then every user's stream is read back from the new master:
an accepted message missing from it was lost to asynchronous replication.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_cluster import Cluster, Node, SentinelSetup
from tests.test_redis_cluster import owner

from ssehub.exceptions import StoreUnavailable
from ssehub.stores import Retention, open_store
from ssehub.stores._redis_keys import Keys
from ssehub.stores.redis import RedisStore


async def publish(store: RedisStore, user: str, stop: asyncio.Event, accepted: list[str]) -> int:
    refused = 0
    number = 0
    while not stop.is_set():
        try:
            await store.append(user, f"data: {number}\n".encode())
            accepted.append(f"data: {number}\n")
        except StoreUnavailable:
            refused += 1
            await asyncio.sleep(0.01)
        number += 1
    return refused


async def drill(name: str, url: str, victim: Node, tasks: int, seconds: float) -> None:
    # History long enough to hold every message of the run.
    store = open_store(f"{url}?prefix=drill", retention=Retention(max_events=10**6))
    assert isinstance(store, RedisStore)
    await store.start()
    stop = asyncio.Event()
    users = [f"drill{i}" for i in range(tasks)]
    accepted: dict[str, list[str]] = {user: [] for user in users}
    runs = [asyncio.create_task(publish(store, u, stop, accepted[u])) for u in users]
    await asyncio.sleep(seconds / 2)
    before = sum(map(len, accepted.values()))
    victim.kill()
    killed = time.monotonic()
    while True:  # until an append goes through again
        try:
            await store.append(users[0], b"data: probe\n")
            break
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    back = time.monotonic() - killed
    await asyncio.sleep(seconds / 2)
    stop.set()
    refused = sum(await asyncio.gather(*runs))
    lost = 0
    for user in users:
        kept = {
            e.payload.decode() for e in (await store.read_after(user, None, limit=10**6)).events
        }
        lost += sum(1 for data in accepted[user] if data not in kept)
    total = sum(map(len, accepted.values()))
    print(
        f"{name}: {tasks} tasks, {total:,} accepted ({before:,} before the kill), "
        f"{refused:,} refused; appends again {back:.1f} s after the kill; "
        f"{lost} accepted but lost"
    )
    await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssehub-bench-failover-") as directory:
        sentinel = SentinelSetup(Path(directory) / "s", sentinels=3)
        sentinel.start()
        try:
            await drill("sentinel", sentinel.url, sentinel.master, args.tasks, args.seconds)
        finally:
            sentinel.stop()
        cluster = Cluster(Path(directory) / "c", replicas=1).start()
        try:
            victim, _ = owner(cluster, Keys("drill").stream("drill0"))
            await drill("cluster", cluster.url, victim, args.tasks, args.seconds)
        finally:
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
