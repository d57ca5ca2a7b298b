"""Server CPU per delivery with the undelivered check, against the same run without.

Usage: ``python bench/presence_cost.py [--store URL|sqlite] [--users N] [--messages M]
[--repeats R] [--off-only] [--in-process]``

A real ``ssehub serve`` (fast path) with ``--users`` streams, one per user, read by raw
sockets here; ``--messages`` messages published in batches of 100 over HTTP, to the
users in turn. The figure is the server process's CPU time (user + system, from
``/proc``) over the deliveries, from the first publish until every message was
delivered and, with the check on, checked at its deadline. Runs alternate, ``off``
then ``on``, ``--repeats`` times; the best of each counts:

``--in-process`` runs the same load on a hub in this process (a sink that takes every
frame for each stream, no HTTP, no sockets): the hub's own work, which the check adds
to, with far less noise on a busy machine than the server's figure.

- ``off``: no ``--undelivered-after``. Online/offline tracking is always on, and costs
  nothing per delivery (presence is told of opens and closes, not messages); neither
  does the new-tab rule (a new stream starts after the id the hub already keeps).
- ``on``: ``--undelivered-after 0.5``: each accepted message is remembered until its
  deadline, each delivery noted, the delivered cursors shared once a tick, and each
  message checked at its deadline (all were delivered: no event is emitted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

from ssehub import Hub
from ssehub.stores import open_store

BATCH = 100
UNDELIVERED_AFTER = 0.5
CHECK_WAIT = UNDELIVERED_AFTER + 1.0
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def hold_stream(port: int, user: str, opened: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse/connect/{user} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    opened.set()
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def delivered(client: httpx.AsyncClient, url: str) -> int:
    for line in (await client.get(f"{url}/metrics")).text.splitlines():
        if line.startswith("ssehub_messages_delivered_total "):
            return int(float(line.split()[1]))
    raise RuntimeError("no delivery counter")


async def run(store: str, users: int, messages: int, undelivered: float | None) -> float:
    port = free_port()
    extra = ["--undelivered-after", str(undelivered)] if undelivered is not None else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEHUB_")}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ssehub", "serve", "--port", str(port), "--store", store,
        "--keepalive", "30", "--log-level", "warning", *extra,
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    streams: list[asyncio.Task[None]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(200):
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
            for n in range(users):
                opened = asyncio.Event()
                streams.append(asyncio.create_task(hold_stream(port, f"u{n}", opened)))
                await opened.wait()
            # The state lives in the server process: polled.
            while (await client.get(f"{url}/healthz")).json()["streams"] < users:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            body = {"messages": [{"user_id": f"u{n % users}", "data": "x" * 100}
                                 for n in range(BATCH)]}  # fmt: skip
            before = await delivered(client, url)
            started = cpu_seconds(server.pid)
            for _ in range(messages // BATCH):
                assert (await client.post(f"{url}/sse/messages", json=body)).status_code == 202
            while await delivered(client, url) - before < messages:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            # Wait for the checks at the deadlines; both runs wait alike, so the idle
            # CPU of the wait counts in both.
            await asyncio.sleep(CHECK_WAIT)
            spent = cpu_seconds(server.pid) - started
            count = await delivered(client, url) - before
    finally:
        for task in streams:
            task.cancel()
        server.terminate()
        await server.wait()
    return spent / count * 1e6


class CountingSink:
    """A stream that takes every frame (for ``--in-process``)."""

    def write(self, data: bytes) -> bool:
        return True

    def close(self, final: bytes | None = None) -> None:
        pass


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_in_process(store: str, users: int, messages: int, undelivered: float | None) -> float:
    """The same load on a hub in this process: no HTTP, no sockets, only the hub's work."""
    # Only when set: so --off-only also runs against an ssehub from before the check.
    options: dict[str, Any] = {} if undelivered is None else {"undelivered_after": undelivered}
    hub = Hub(open_store(store), keepalive=30.0, **options)
    async with hub.running():
        for n in range(users):
            await hub.open(f"u{n}", CountingSink())
        before = hub.stats.delivered
        started = own_cpu()
        for _ in range(messages // BATCH):
            await hub.send_encoded([(f"u{n % users}", hub.encode("x" * 100)) for n in range(BATCH)])
        while hub.stats.delivered - before < messages:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # Redis delivers through pub/sub, a little later
        await asyncio.sleep(CHECK_WAIT)
        if undelivered is not None:
            assert hub.presence.emitted["message.undelivered"] == 0
        return (own_cpu() - started) / (hub.stats.delivered - before) * 1e6


async def forget(url: str, prefix: str) -> None:
    """Delete what a run left on Redis."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)
    await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--in-process", action="store_true", help="a hub in this process, no server"
    )
    parser.add_argument(
        "--off-only",
        action="store_true",
        help="only the run without the check (e.g. against an older ssehub on PYTHONPATH)",
    )
    args = parser.parse_args()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            modes = [("off", None)] if args.off_only else [("off", None), ("on", UNDELIVERED_AFTER)]
            for name, undelivered in modes:
                store = args.store
                if store == "sqlite":
                    store = f"sqlite:///{folder}/{name}{repeat}.db"
                elif store.startswith("redis://"):
                    prefix = f"bench-presence-{uuid.uuid4().hex[:8]}"
                    store = f"{args.store}?prefix={prefix}"
                try:
                    measure = run_in_process if args.in_process else run
                    figure = await measure(store, args.users, args.messages, undelivered)
                finally:
                    if store.startswith("redis://"):
                        await forget(args.store, prefix)
                best[name] = min(best.get(name, figure), figure)
                print(f"  {name}: {figure:.2f} µs", flush=True)
    what = "CPU in-process" if args.in_process else "server CPU"
    if args.off_only:
        print(f"{args.store}: {best['off']:.2f} µs {what} per delivery")
        return
    print(
        f"{args.store}: {best['off']:.2f} µs {what} per delivery without the "
        f"undelivered check, {best['on']:.2f} µs with it: x{best['on'] / best['off']:.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
