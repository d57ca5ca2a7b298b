"""CPU per user of a broadcast on the SQLite store, in the process (no HTTP).

Usage: ``python bench/sqlite_broadcast.py [--users N] [--broadcasts N]``

Every user is watched (a stream open, as the hub does), and each broadcast goes through
the hub's broadcast queue (`ssehub._broadcasts.Broadcasts`) to a listener that builds
each event's frame, as the hub's does. CPU is the process's (every thread: the loop,
the writer, the checkpointer), so it is steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from ssehub._broadcasts import Broadcasts
from ssehub.events import StoredEvent
from ssehub.stores.sqlite import SqliteStore


class FramingListener:
    """Builds the frame of every event it hears, and counts them."""

    def __init__(self) -> None:
        self.heard = 0

    def on_event(self, user_id: str, event: StoredEvent) -> None:
        event.frame()
        self.heard += 1

    def on_broadcast(self, payload: bytes) -> None:
        return None

    def on_disconnect(self, user_id: str) -> None:
        return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(folder: Path, users: int, broadcasts: int) -> tuple[float, float]:
    store = SqliteStore(folder / "broadcast.db")
    listener = FramingListener()
    store.bind(listener)
    await store.start()
    try:
        user_ids = [f"user-{n}" for n in range(users)]
        for user_id in user_ids:
            await store.watch(user_id)
            await store.set_presence(user_id, connections=1)
        queue = Broadcasts(store, lambda appended: None)
        queue.add(user_ids, b"data: warm-up\n")
        await queue.drain()
        cpu, wall = cpu_seconds(), time.perf_counter()
        for n in range(broadcasts):
            queue.add(user_ids, b'data: {"n": %d, "text": "a broadcast"}\n' % n)
            await queue.drain()
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
        assert listener.heard == users * (broadcasts + 1)
    finally:
        await store.close()
    return cpu / (users * broadcasts), wall / broadcasts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--broadcasts", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        per_user, per_broadcast = await measure(Path(folder), args.users, args.broadcasts)
    print(
        f"{per_user * 1e6:.2f} µs of CPU per user, {per_broadcast * 1e3:.1f} ms per "
        f"broadcast to {args.users:,} users"
    )


if __name__ == "__main__":
    asyncio.run(main())
