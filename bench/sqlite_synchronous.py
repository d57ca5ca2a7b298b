"""Appends per second of the SQLite store for each ``synchronous`` setting.

Usage: ``python bench/sqlite_synchronous.py [--seconds S] [--dir PATH]``

Two loads per setting: one task appending one event at a time (every append waits for
its own commit), and 100 tasks appending at once (the writer batches them into shared
commits). ``--dir`` should be on the disk you mean to measure (default: a temporary
folder).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from ssehub.stores.sqlite import SYNCHRONOUS, SqliteStore

PAYLOAD = b"data: " + b"x" * 200 + b"\n"


async def rate(store: SqliteStore, tasks: int, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def appender(user_id: str) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await store.append(user_id, PAYLOAD)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(appender(f"user-{n}") for n in range(tasks)))
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print(f"{'synchronous':<12} {'1 task':>12} {'100 tasks':>12}  (appends/s)")
        for synchronous in SYNCHRONOUS:
            store = SqliteStore(Path(folder) / f"{synchronous}.db", synchronous=synchronous)
            await store.start()
            try:
                one = await rate(store, 1, args.seconds)
                many = await rate(store, 100, args.seconds)
            finally:
                await store.close()
            print(f"{synchronous:<12} {one:>12,.0f} {many:>12,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
