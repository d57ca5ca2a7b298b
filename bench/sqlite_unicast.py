"""CPU per message of unicast appends on the SQLite store, in the process (no HTTP).

Usage: ``python bench/sqlite_unicast.py [--users N] [--messages N] [--in-flight N]``

Batches of 100 messages to random users, ``--in-flight`` batches waiting at once (the
writer commits whatever is waiting in one transaction, so this sets a transaction's
size, as concurrent publish requests do). It runs twice on the same batches: on the
store as it is, and with the per-user index (``events_by_user``) dropped after every
user has had a message (no user gets more than retention keeps, so nothing reads by
user). The difference is what keeping that index costs per message: each message lands
in its user's part of the index, so a transaction dirties about one index page per
message; SQLite writes each dirty page to the WAL, and the checkpoint copies it again.
CPU is the process's (every thread: the loop, the writer, the checkpointer).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sqlite3
import tempfile
from pathlib import Path

from sqlite_broadcast import FramingListener, cpu_seconds

from ssehub.stores.base import Retention
from ssehub.stores.sqlite import SqliteStore

BATCH = 100
Batch = list[tuple[str, bytes]]
PAYLOAD = b'data: {"text": "a message of about a hundred bytes, as the benchmark sends"}\n'


async def measure(
    path: Path, user_ids: list[str], batches: list[Batch], in_flight: int, index: bool
) -> float:
    store = SqliteStore(path)
    store.bind(FramingListener())  # builds each event's frame, as the hub does
    await store.start()
    try:
        await store.append_many([(user_id, PAYLOAD) for user_id in user_ids])
        if not index:
            with sqlite3.connect(path, isolation_level=None, timeout=10.0) as conn:
                conn.execute("DROP INDEX events_by_user")

        async def publisher(mine: list[Batch]) -> None:
            for batch in mine:
                await store.append_many(batch)

        cpu = cpu_seconds()
        await asyncio.gather(*(publisher(batches[n::in_flight]) for n in range(in_flight)))
        cpu = cpu_seconds() - cpu
    finally:
        await store.close()
    return cpu / (len(batches) * BATCH)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, default=4, help="batches of 100 waiting at once")
    args = parser.parse_args()
    user_ids = [f"user-{n}" for n in range(args.users)]
    pick = random.Random(1).choice
    batches = [
        [(pick(user_ids), PAYLOAD) for _ in range(BATCH)] for _ in range(args.messages // BATCH)
    ]
    busiest = max(collections.Counter(user for batch in batches for user, _ in batch).values())
    if busiest + 1 > Retention().max_events:
        # Retention would trim, and trimming reads by user: a scan of the whole table
        # without the index, which is not what is measured here.
        parser.error(f"one user would get {busiest + 1} messages: more than retention keeps")
    figures = {}
    for index in (True, False):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "unicast.db"
            figures[index] = await measure(path, user_ids, batches, args.in_flight, index)
    with_index, without = figures[True] * 1e6, figures[False] * 1e6
    print(
        f"{args.users:,} users, {args.in_flight} batches of {BATCH} in flight: "
        f"{with_index:.2f} µs of CPU per message; without the per-user index {without:.2f} "
        f"(the index: {with_index - without:.2f} µs, {(with_index - without) / with_index:.0%})"
    )


if __name__ == "__main__":
    asyncio.run(main())
