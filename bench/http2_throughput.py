"""Delivery throughput of a running hub over HTTP/1.1 or HTTP/2.

Usage: ``python bench/http2_throughput.py URL [--http2] [--cafile PEM] [--streams N]
[--messages M]``

Opens N streams (one user each; over HTTP/2 they share one connection, as a browser's
tabs do), publishes M messages to every user in batches of 1,000, and reports the
messages delivered per second, counted from the first publish until every stream has
received all of its messages. The client is Python (httpx + httpx-sse), the same for
both protocols, so compare the two numbers with each other, not with the C load
generator's.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time

import httpx
from httpx_sse import aconnect_sse


async def run(url: str, *, http2: bool, cafile: str | None, streams: int, messages: int) -> None:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
    limits = httpx.Limits(max_connections=streams + 10)
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(
        base_url=url, http2=http2, verify=verify, limits=limits, timeout=timeout
    ) as client:
        opened = asyncio.Semaphore(0)
        done = [0] * streams
        versions: set[str] = set()

        async def reader(index: int) -> None:
            async with aconnect_sse(client, "GET", f"/sse/connect/bench-{index}") as source:
                versions.add(source.response.http_version)
                opened.release()
                async for event in source.aiter_sse():
                    if event.id:
                        done[index] += 1
                        if done[index] == messages:
                            return

        tasks = [asyncio.create_task(reader(i)) for i in range(streams)]
        for _ in range(streams):
            await opened.acquire()
        started = time.perf_counter()
        step = max(1, 1000 // streams)  # a batch holds at most 1,000 messages
        for first in range(0, messages, step):
            batch = [
                {"user_id": f"bench-{i}", "data": f"message {n}"}
                for n in range(first, min(first + step, messages))
                for i in range(streams)
            ]
            answer = await client.post("/sse/messages", json={"messages": batch})
            answer.raise_for_status()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    total = streams * messages
    print(
        f"{'/'.join(sorted(versions))}: {total} messages to {streams} streams in "
        f"{elapsed:.2f} s = {total / elapsed:,.0f} messages/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--http2", action="store_true", help="speak HTTP/2 (needs https)")
    parser.add_argument("--cafile", help="trust this certificate (a self-signed one)")
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--messages", type=int, default=1000, help="messages per stream")
    args = parser.parse_args()
    asyncio.run(
        run(args.url, http2=args.http2, cafile=args.cafile, streams=args.streams,
            messages=args.messages)
    )  # fmt: skip


if __name__ == "__main__":
    main()
