"""Hostile clients against a real server: garbage cursors, floods of drops, slowloris.

The server must keep serving everyone else, keep its memory bounded, and lose nothing
it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import STREAM_MODES, ServerFactory, ServerProcess, free_port
from tests.redis_server import forget_prefix, store_url
from tests.sse import Stream

pytestmark = pytest.mark.anyio

GARBAGE_IDS = [
    "abc", "-1", "1-", "-", "1-2-3", "1.5", " 1", "1 ", "0x10", "1e3",
    "\uff11\uff12", "\u0661\u0662",  # digits, but not ASCII ones
    "9" * 21, "1-" + "9" * 21, "%00", "\x00", "1\x002", "💥", "x" * 4000,
]  # fmt: skip


def rss_kib(server: ServerProcess) -> int:
    """Resident memory of the server process, from /proc."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def streams_open(client: httpx.AsyncClient, url: str) -> int:
    return int((await client.get(f"{url}/healthz")).json()["streams"])


async def wait_for_streams(client: httpx.AsyncClient, url: str, count: int, timeout: float) -> None:
    """Wait (bounded) until the server counts ``count`` open streams."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (found := await streams_open(client, url)) != count:
        if loop.time() > deadline:
            raise AssertionError(f"{found} streams still open, expected {count}")
        await asyncio.sleep(0.05)  # the count lives in another process: poll it


@pytest.fixture(scope="module", params=STREAM_MODES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per front door for this module: SQLite store, 64 KiB stream buffers."""
    path = tmp_path_factory.mktemp("hostile")
    factory = ServerFactory(path, request.param)
    try:
        yield factory(store=f"sqlite:///{path / 'hub.db'}", env={"SSEHUB_BUFFER_BYTES": "65536"})
    finally:
        factory.close()


async def test_garbage_last_event_ids_get_400_json_and_hurt_no_one(server: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        sent = await client.post(f"{server.url}/sse/users/alice/messages", json={"data": "kept"})
        assert sent.status_code == 202
        for garbage in GARBAGE_IDS:
            for where in ("header", "query"):
                sendable = (
                    garbage.isascii() and garbage.isprintable() and garbage == garbage.strip()
                )
                if where == "header" and not sendable:
                    continue  # not a legal header value; the query covers these
                headers = {"Last-Event-ID": garbage} if where == "header" else {}
                params = {"last_event_id": garbage} if where == "query" else {}
                async with client.stream(
                    "GET", f"{server.url}/sse/connect/alice", headers=headers, params=params
                ) as answer:
                    assert answer.status_code == 400, (garbage, where)
                    detail = httpx.Response(200, content=await answer.aread()).json()["detail"]
                assert "Last-Event-ID" in detail
        # Ids of the right shape but from nowhere (far future, zero) are not errors.
        for odd in ("0", "0-0", "99999999999999999999", "18446744073709551615-1"):
            async with Stream(server.url, "alice", headers={"Last-Event-ID": odd}) as stream:
                assert stream.status_code == 200, (odd, stream.error_body)
    async with Stream(server.url, "alice", params={"last_event_id": "0"}) as alice:
        (greeting, kept) = await alice.messages(2)
        assert greeting.data == "User 'alice' connected"
        assert kept.data == "kept"
        assert kept.id == sent.json()["id"]


@pytest.mark.redis
async def test_garbage_and_odd_last_event_ids_are_answered_by_the_redis_store_too(
    start_server: ServerFactory,
) -> None:
    prefix = f"hostile{free_port()}"
    server = start_server(store=store_url(prefix))
    try:
        await test_garbage_last_event_ids_get_400_json_and_hurt_no_one(server)
    finally:
        forget_prefix(prefix)


async def _hostile_client(port: int, user: str, style: int) -> None:
    """Connect, then leave rudely at one of several moments."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    request = f"GET /sse/connect/{user} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    if style == 0:  # half a request, then a reset
        writer.write(request[: len(request) // 2].encode())
    else:
        writer.write(request.encode())
        await writer.drain()
        if style >= 2:  # wait for the stream to start before leaving
            await asyncio.wait_for(reader.readuntil(b"connected"), 10)
    if style % 2 == 0:  # RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_a_flood_of_connects_and_abrupt_drops_leaves_no_stream_and_little_memory(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:

        async def flood(rounds: int) -> None:
            for round_ in range(rounds):
                await asyncio.gather(
                    *(_hostile_client(server.port, f"u{n % 50}", (n + round_) % 4)
                      for n in range(100))
                )  # fmt: skip

        await flood(1)  # warm up: imports, buffers, caches
        await wait_for_streams(client, server.url, 0, timeout=10)
        before = rss_kib(server)
        await flood(4)
        await wait_for_streams(client, server.url, 0, timeout=10)
        after = rss_kib(server)
        assert after - before < 16 * 1024, f"RSS grew from {before} to {after} KiB"
        async with Stream(server.url, "survivor") as survivor:  # still serving
            await survivor.next_message()
            answer = await client.post(
                f"{server.url}/sse/users/survivor/messages", json={"data": "still here"}
            )
            message = await survivor.next_message()
        assert message is not None
        assert message.data == "still here"
        assert message.id == answer.json()["id"]


async def test_clients_that_never_read_are_closed_while_others_get_everything(
    server: ServerProcess,
) -> None:
    slow_users = ["slow0", "slow1"]
    sockets: list[socket.socket] = []
    for user in slow_users:  # open a stream and never read from it, with a tiny window
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET /sse/connect/{user} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sockets.append(sock)
    chunk = "x" * 32_000
    try:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            Stream(server.url, "reader") as reader,
        ):
            await wait_for_streams(client, server.url, len(slow_users) + 1, timeout=10)
            # Publish until the kernel's and the server's buffers of the slow streams
            # overflow and the server drops them (a few MB on loopback), at most 64 MB.
            ids: list[str] = []
            sent_slow = 0
            while await streams_open(client, server.url) > 1:
                assert sent_slow < 1000, "the slow streams were never closed"
                batch = [{"user_id": u, "data": chunk} for u in slow_users for _ in range(8)]
                batch.append({"user_id": "reader", "data": f"m{len(ids)}"})
                answer = await client.post(f"{server.url}/sse/messages", json={"messages": batch})
                assert answer.status_code == 202
                ids.append(answer.json()["ids"][-1])
                sent_slow += 8
            received = await reader.messages(len(ids) + 1, timeout=20)  # with the greeting
            assert [e.data for e in received[1:]] == [f"m{n}" for n in range(len(ids))]
            assert [e.id for e in received[1:]] == ids
        # nothing accepted was lost: a slow user who comes back gets all of it
        async with Stream(server.url, "slow0", params={"last_event_id": "0"}) as slow:
            replayed = await slow.messages(sent_slow + 1, timeout=30)
        assert [e.data for e in replayed[1:]] == [chunk] * sent_slow
    finally:
        for sock in sockets:
            sock.close()
    assert "Traceback" not in server.log()
