"""CPU per message of unicast appends on the SQLite store, in the process (no HTTP).

Usage: ``python bench/sqlite_unicast.py [--users N] [--messages N] [--in-flight N] [--full]``

Batches of 100 messages to random users, ``--in-flight`` batches waiting at once (the
writer commits whatever is waiting in one transaction, so this sets a transaction's
size, as concurrent publish requests do). It runs twice on the same batches: on the
store as it is (each user's ids folded into ``user_events`` about once a second), and
with an index on ``events (user_id, id)`` added and no fold, as the store was before.
The difference is what keeping such an index current costs per message: each message
lands in its user's part of the index, so a transaction dirties about one index page
per message; SQLite writes each dirty page to the WAL, and the checkpoint copies it
again. CPU is the process's (every thread: the loop, the writer, the checkpointer).

``--full`` measures instead what a hub pays once its users hold as many events as
retention keeps (1,000 each by default): every message then also deletes its user's
oldest. It runs the store as it is twice, on users with one event each and on users
filled to the limit first.
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
    path: Path,
    user_ids: list[str],
    batches: list[Batch],
    in_flight: int,
    old_index: bool,
    fill: int = 1,
) -> float:
    # As before: the index kept current with every message, and no folds during the run.
    store = SqliteStore(path, index_interval=3600.0 if old_index else 1.0)
    store.bind(FramingListener())  # builds each event's frame, as the hub does
    await store.start()
    try:
        for _ in range(fill):  # ``fill`` events for every user
            await store.append_many([(user_id, PAYLOAD) for user_id in user_ids])
        if old_index:
            with sqlite3.connect(path, isolation_level=None, timeout=10.0) as conn:
                conn.execute("CREATE INDEX events_by_user ON events (user_id, id)")

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
    parser.add_argument(
        "--full", action="store_true", help="users filled to what retention keeps, first"
    )
    args = parser.parse_args()
    user_ids = [f"user-{n}" for n in range(args.users)]
    pick = random.Random(1).choice
    batches = [
        [(pick(user_ids), PAYLOAD) for _ in range(BATCH)] for _ in range(args.messages // BATCH)
    ]
    busiest = max(collections.Counter(user for batch in batches for user, _ in batch).values())
    if args.full:
        await measure_full(user_ids, batches, args.in_flight)
        return
    if busiest + 1 > Retention().max_events:
        # Retention would trim, which is not what is measured here.
        parser.error(f"one user would get {busiest + 1} messages: more than retention keeps")
    figures = {}
    for old_index in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "unicast.db"
            figures[old_index] = await measure(path, user_ids, batches, args.in_flight, old_index)
    now, before = figures[False] * 1e6, figures[True] * 1e6
    print(
        f"{args.users:,} users, {args.in_flight} batches of {BATCH} in flight: "
        f"{now:.2f} µs of CPU per message; with an index on (user_id, id) as before "
        f"{before:.2f} (x{before / now:.2f})"
    )


async def measure_full(user_ids: list[str], batches: list[Batch], in_flight: int) -> None:
    figures = {}
    for fill in (1, Retention().max_events):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "unicast.db"
            figures[fill] = await measure(path, user_ids, batches, in_flight, False, fill) * 1e6
    fresh, full = figures.values()
    print(
        f"{len(user_ids):,} users, {in_flight} batches of {BATCH} in flight: {fresh:.2f} µs of "
        f"CPU per message; with every user at the retention limit {full:.2f} (x{full / fresh:.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
