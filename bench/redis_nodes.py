"""What the Redis store costs: Redis CPU per message, and publish-to-stream latency
across two real nodes, against one node on ``memory://``.

    python bench/redis_nodes.py [REDIS_URL]      (default redis://127.0.0.1:6379/0)

Keys go under a fresh prefix and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import redis
from httpx_sse import aconnect_sse

from ssehub.events import StoredEvent
from ssehub.stores.redis import RedisStore

PAYLOAD = b"data: " + b"x" * 100 + b"\n"


class _Counter:
    def __init__(self) -> None:
        self.heard = 0
        self.want = 0
        self.done = asyncio.Event()

    def on_event(self, user_id: str, event: StoredEvent) -> None:
        self.heard += 1
        if self.heard >= self.want:
            self.done.set()

    def on_broadcast(self, payload: bytes) -> None:
        pass

    def on_disconnect(self, user_id: str) -> None:
        pass


async def redis_cpu(url: str) -> None:
    """Redis CPU per message, from INFO commandstats, single appends and batches of 100."""
    admin = redis.Redis.from_url(url.split("?")[0])
    store = RedisStore.from_url(url)
    counter = _Counter()
    store.bind(counter)
    await store.start()
    users = [f"u{i}" for i in range(100)]
    for user in users:
        await store.watch(user)
    for batch, rounds in ((1, 2000), (100, 50)):
        admin.config_resetstat()
        counter.heard, counter.want = 0, batch * rounds
        counter.done.clear()
        started = time.perf_counter()
        for r in range(rounds):
            await store.append_many([(users[(r + i) % 100], PAYLOAD) for i in range(batch)])
        await asyncio.wait_for(counter.done.wait(), 60)
        elapsed = time.perf_counter() - started
        stats = admin.info("commandstats")["cmdstat_evalsha"]
        print(
            f"append_many of {batch:>3}: {stats['usec_per_call'] / batch:6.1f} us of Redis CPU "
            f"per message, {batch * rounds / elapsed:8.0f} messages/s heard back"
        )
    await store.close()
    admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _node(store: str) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssehub", "serve", "--port", str(port), "--store", store,
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def latency(label: str, publish_url: str, stream_url: str, count: int = 300) -> None:
    """Median and p95 of POST on one node -> event on a stream of the other."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
        aconnect_sse(client, "GET", f"{stream_url}/sse/connect/bench") as source,
    ):
        events = source.aiter_sse()
        await anext(events)  # the greeting
        took = []
        for i in range(count):
            started = time.perf_counter()
            answer = await client.post(
                f"{publish_url}/sse/users/bench/messages", json={"data": f"m{i}"}
            )
            assert answer.status_code == 202, answer.text
            while (await anext(events)).data != f"m{i}":
                pass
            took.append(time.perf_counter() - started)
        took.sort()
        print(
            f"{label}: publish -> stream median {statistics.median(took) * 1e3:.2f} ms, "
            f"p95 {took[int(count * 0.95)] * 1e3:.2f} ms"
        )


async def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    url = f"{base}?prefix={prefix}"
    try:
        await redis_cpu(url)
        with _node("memory://") as one:
            await latency("one node, memory://      ", one, one)
        with _node(url) as node_a, _node(url) as node_b:
            await latency("two nodes, redis (B -> A)", node_b, node_a)
    finally:
        with redis.Redis.from_url(base) as admin:
            keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                admin.delete(*keys)


if __name__ == "__main__":
    asyncio.run(main())
