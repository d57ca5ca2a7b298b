"""The floor under the steady figure on Redis: Redis's own round trip, without ssehub.

Usage: ``python bench/redis_floor.py [--redis URL] [--rounds R]``

The steady scenario of ``bench/run.py`` (5,000 messages a second in batches of 10 to
1,000 users) measures each message from its batch's scheduled time to its arrival at
the subscriber. On the Redis store a message takes two trips through Redis on its way:
the script call that appends it, and the pub/sub message that brings it back to the
node. This measures those two trips alone, at the same rate, in a process pinned to
the server's core, with a bare RESP client (hiredis, no redis-py): a script that
appends each message of a batch of 10 to its user's stream (``XADD``) and publishes it
on the user's channel, called every 2 ms; a subscriber connection of the same process
on the 1,000 channels; each message timed from the batch's scheduled time to its
arrival.
No HTTP, no hub, no SSE.

Beside it, in the same run, the ceiling's steady p99 (`bench/ceiling.py`, the scenario
of ``bench/run.py``): the target for the Redis store is at most 2.5 times that. The
database named by ``--redis`` (15 by default) is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
from run import FULL, PYTHON, SERVER_CORE, build, latency, running, servers, unicast

RATE = 5_000  # messages a second, as the steady scenario
BATCH = 10
USERS = 1_000
SECONDS = 10.0

_APPEND = """
for i = 1, #KEYS do
  redis.call('XADD', 'floor:s:' .. KEYS[i], '*', 'd', ARGV[i])
  redis.call('PUBLISH', 'floor:c:' .. KEYS[i], ARGV[i])
end
return #KEYS
"""


class Resp(asyncio.Protocol):
    """A bare RESP connection: commands out, each reply (or push) to ``on_reply``.

    hiredis packs and parses, as it does under the Redis store's client.
    """

    def __init__(self, on_reply: Callable[[Any], None]) -> None:
        self.on_reply = on_reply
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, *parts: str | bytes) -> None:
        assert self.transport is not None
        self.transport.write(hiredis.pack_command(parts))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(str(reply))
            self.on_reply(reply)


async def floor(host: str, port: int, database: str) -> dict[str, float]:
    """Run the two trips at `RATE` for `SECONDS`; the latency of every message."""
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[int, int]] = []  # (scheduled ns, arrival ns)
    replies: asyncio.Queue[Any] = asyncio.Queue()
    subscribed, all_in = asyncio.Event(), asyncio.Event()
    count = int(RATE * SECONDS)

    def pushed(value: Any) -> None:
        if value[0] == b"message":
            arrivals.append((int(value[2].split(b" ")[0]), time.time_ns()))
            if len(arrivals) == count:
                all_in.set()
        elif value[0] == b"subscribe" and value[2] == USERS:
            subscribed.set()

    _, calls = await loop.create_connection(lambda: Resp(replies.put_nowait), host, port)
    _, listener = await loop.create_connection(lambda: Resp(pushed), host, port)
    calls.send("SELECT", database)
    await replies.get()
    calls.send("SCRIPT", "LOAD", _APPEND)
    sha = await replies.get()
    listener.send("SUBSCRIBE", *[f"floor:c:{n}" for n in range(USERS)])
    await asyncio.wait_for(subscribed.wait(), 10)
    start = time.time_ns() + 10_000_000
    for batch in range(count // BATCH):
        due = start + batch * BATCH * 1_000_000_000 // RATE
        wait = (due - time.time_ns()) / 1e9
        if wait > 0.001:  # the loop's timers wake up to a millisecond late: spin the rest
            await asyncio.sleep(wait - 0.001)
        while time.time_ns() < due:
            pass
        users = [str((batch * BATCH + n) * 7919 % USERS) for n in range(BATCH)]
        calls.send("EVALSHA", sha, str(BATCH), *users, *[f"{due} {'x' * 80}" for _ in users])
        await replies.get()
    with contextlib.suppress(TimeoutError):  # what never came is counted as lost
        await asyncio.wait_for(all_in.wait(), 30)
    calls.send("FLUSHDB")
    await replies.get()
    return {**latency(arrivals), "lost": count - len(arrivals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_only:  # the child process, pinned to the server's core
        where = urllib.parse.urlsplit(args.redis)
        database = where.path.strip("/") or "0"
        hostname, port = where.hostname or "127.0.0.1", where.port or 6379
        print(json.dumps(asyncio.run(floor(hostname, port, database))))
        return
    build()
    sizes = dataclasses.replace(FULL, unicast_messages=1_000)  # then the steady load
    ceilings, floors = [], []
    with tempfile.TemporaryDirectory() as workdir:
        ceiling = servers(15.0, Path(workdir), None)[0]
        for round_ in range(1, args.rounds + 1):
            with running(ceiling, Path(workdir) / "ceiling.log") as (proc, url):
                steady = unicast(proc, url, sizes)["steady"]
            child = subprocess.run(
                ["taskset", "-c", SERVER_CORE, PYTHON, __file__, "--floor-only",
                 "--redis", args.redis],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            bare = json.loads(child.stdout)
            ceilings.append(steady["p99_ms"])
            floors.append(bare["p99_ms"])
            print(f"round {round_}: ceiling steady p99 {steady['p99_ms']:.2f} ms; "
                  f"Redis's two trips p50 {bare['p50_ms']:.2f}, p99 {bare['p99_ms']:.2f} ms "
                  f"({bare['p99_ms'] / steady['p99_ms']:.1f}x the ceiling's p99), "
                  f"lost {bare['lost']}")  # fmt: skip
    ceiling_p99, floor_p99 = statistics.median(ceilings), statistics.median(floors)
    print(f"medians: ceiling p99 {ceiling_p99:.2f} ms, Redis's two trips p99 "
          f"{floor_p99:.2f} ms: {floor_p99 / ceiling_p99:.1f}x the ceiling "
          f"(the Redis store's target: at most 2.5x)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
