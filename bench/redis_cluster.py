"""What the Redis Cluster store costs: Redis CPU per message on each master, and how
messages spread over the masters, with clusters of 1, 2 and 3 masters started here.

    python bench/redis_cluster.py [--messages N] [--users U]

For each cluster size: batches of 100 messages (``append_many``, as ``POST
/sse/messages`` does) and single appends (``POST /sse/users/{id}/messages``), to U
users picked at random, from one publisher task. Per master: its share of the messages
(``INFO commandstats``, XADD calls) and its CPU (``INFO cpu``, user + system, less what
it spends idle: its cron and the cluster bus, measured for a second before) per message
it handled. For comparison, the same on one Redis server (``redis://``). Each Redis runs
on free loopback ports in a temporary directory and is stopped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_cluster import Cluster, Node

from ssehub.stores.redis import RedisStore
from ssehub.stores.redis_cluster import RedisClusterStore

PAYLOAD = b"data: " + b"x" * 100 + b"\n"


def sample(node: Node) -> tuple[float, int]:
    """(CPU seconds, XADD calls) of a master so far."""
    with redis.Redis(port=node.port) as client:
        cpu = client.info("cpu")
        xadd = client.info("commandstats").get("cmdstat_xadd", {"calls": 0})
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(xadd["calls"])


async def run(masters: int, messages: int, users: int) -> None:
    """Measure a cluster of ``masters`` masters, or one plain server for 0."""
    with tempfile.TemporaryDirectory(prefix="ssehub-bench-cluster-") as directory:
        if masters:
            cluster = Cluster(Path(directory), masters=masters).start()
            store: RedisStore = RedisClusterStore.from_url(f"{cluster.url}?prefix=bench")
            title = f"{masters} master(s)"
        else:
            cluster = Cluster(Path(directory), masters=0)
            cluster.nodes = [Node(Path(directory)).start()]
            store = RedisStore.from_url(f"redis://127.0.0.1:{cluster.nodes[0].port}?prefix=bench")
            title = "one server"
        try:
            await store.start()
            idle_start = [sample(node) for node in cluster.nodes]
            await asyncio.sleep(1.0)
            idle = [
                sample(node)[0] - before[0]
                for node, before in zip(cluster.nodes, idle_start, strict=True)
            ]
            names = [f"user{i}" for i in range(users)]
            rng = random.Random(1)
            for label, batch, count in (
                ("batches of 100", 100, messages),
                ("single appends", 1, messages // 4),
            ):
                before = [sample(node) for node in cluster.nodes]
                started = time.perf_counter()
                for _ in range(count // batch):
                    await store.append_many([(rng.choice(names), PAYLOAD) for _ in range(batch)])
                elapsed = time.perf_counter() - started
                after = [sample(node) for node in cluster.nodes]
                cpus = [
                    max(0.0, a[0] - b[0] - rest * elapsed)
                    for a, b, rest in zip(after, before, idle, strict=True)
                ]
                done = (count // batch) * batch
                print(
                    f"{title}, {label}: {done / elapsed:,.0f} msg/s from one task; "
                    f"Redis CPU {sum(cpus) / done * 1e6:.1f} µs/msg over all masters"
                )
                for node, a, b, cpu in zip(cluster.nodes, after, before, cpus, strict=True):
                    handled = a[1] - b[1]
                    per = f"{cpu / handled * 1e6:.1f} µs/msg" if handled else "-"
                    print(f"    :{node.port}  {handled / done:6.1%} of messages, CPU {per}")
            await store.close()
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    for masters in (0, 1, 2, 3):
        asyncio.run(run(masters, args.messages, args.users))


if __name__ == "__main__":
    main()
