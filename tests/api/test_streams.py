"""Stream behaviour: the sample's defects, fixed."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.sse import Stream

pytestmark = pytest.mark.anyio


async def publish(client: httpx.AsyncClient, url: str, user: str, data: object) -> str:
    answer = await client.post(f"{url}/sse/users/{user}/messages", json={"data": data})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def wait_for_status(
    client: httpx.AsyncClient, url: str, user: str, status: str, timeout: float = 3.0
) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, object] = (await client.get(f"{url}/sse/users/{user}")).json()
            if body["status"] == status:
                return body
            await asyncio.sleep(0.02)


async def test_every_connection_of_a_user_gets_every_message_in_order_once(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with (
        Stream(server.url, "ann") as tab1,
        Stream(server.url, "ann") as tab2,
        Stream(server.url, "ann") as tab3,
        httpx.AsyncClient() as client,
    ):
        for tab in (tab1, tab2, tab3):
            await tab.next_message()
        ids = [await publish(client, server.url, "ann", f"m{i}") for i in range(20)]
        for tab in (tab1, tab2, tab3):
            got = await tab.messages(20)
            assert [m.data for m in got] == [f"m{i}" for i in range(20)]
            assert [m.id for m in got] == ids
        body = (await client.get(f"{server.url}/sse/users/ann")).json()
        assert body["connections"] == 3


async def test_a_user_stays_connected_while_any_stream_is_open(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        async with Stream(server.url, "ben") as first:
            await first.next_message()
            async with Stream(server.url, "ben") as second:
                await second.next_message()
            body = await wait_for_status(client, server.url, "ben", "connected")
            await asyncio.sleep(0.2)
            body = (await client.get(f"{server.url}/sse/users/ben")).json()
            assert body["status"] == "connected"
            assert body["connections"] == 1
            await publish(client, server.url, "ben", "still")
            assert (await first.messages(1))[0].data == "still"
        body = await wait_for_status(client, server.url, "ben", "disconnected")
        assert body["last_seen"] is not None


async def test_a_client_that_goes_away_is_noticed_before_the_next_keepalive(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=30)
    async with httpx.AsyncClient() as client:
        async with Stream(server.url, "cid") as stream:
            await stream.next_message()
        started = time.monotonic()
        await wait_for_status(client, server.url, "cid", "disconnected", timeout=2)
        assert time.monotonic() - started < 1.0


async def test_non_ascii_and_multiline_text_arrives_intact(start_server: ServerFactory) -> None:
    server = start_server()
    text = "Grüße, 東京 🚀\nzweite Zeile\r\ndritte"
    async with Stream(server.url, "zoë") as stream, httpx.AsyncClient() as client:
        greeting = await stream.next_message()
        assert greeting is not None
        assert greeting.data == "User 'zoë' connected"
        await publish(client, server.url, "zoë", text)
        await publish(client, server.url, "zoë", {"città": "Köln", "n": [1, 2]})
        got = await stream.messages(2)
    assert got[0].data == "Grüße, 東京 🚀\nzweite Zeile\ndritte"
    assert got[1].data == '{"città":"Köln","n":[1,2]}'


async def test_frames_never_interleave_with_keepalives(start_server: ServerFactory) -> None:
    server = start_server(keepalive=0.01)
    big = "\n".join(f"line {i} " + "x" * 200 for i in range(200))
    async with Stream(server.url, "fay") as stream, httpx.AsyncClient() as client:
        await stream.next_message()
        await asyncio.gather(*(publish(client, server.url, "fay", f"{n}:{big}") for n in range(20)))
        got = await stream.messages(20, timeout=10)
    assert sorted(int(m.data.split(":", 1)[0]) for m in got) == list(range(20))
    assert all(m.data.split(":", 1)[1] == big for m in got)


def open_raw_stream(port: int, user: str, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /sse/connect/{user} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


async def test_a_consumer_that_falls_behind_is_closed_without_slowing_others(
    start_server: ServerFactory,
) -> None:
    server = start_server(env={"SSEHUB_BUFFER_BYTES": "65536"})
    slow = open_raw_stream(server.port, "slow", rcvbuf=4096)
    try:
        payload = "y" * 8000
        async with Stream(server.url, "fast") as fast, httpx.AsyncClient() as client:
            await fast.next_message()
            await wait_for_status(client, server.url, "slow", "connected")
            batch = [{"user_id": "slow", "data": payload} for _ in range(100)]
            # How much the kernel takes before the hub's bound is reached depends on its
            # socket buffers: send until the hub gives up on the reader (at most 16 MB).
            for _ in range(20):
                answer = await client.post(f"{server.url}/sse/messages", json={"messages": batch})
                assert answer.status_code == 202
                status = (await client.get(f"{server.url}/sse/users/slow")).json()
                if status["status"] == "disconnected":
                    break
            await publish(client, server.url, "fast", "not held back")
            assert (await fast.messages(1))[0].data == "not held back"
            await wait_for_status(client, server.url, "slow", "disconnected", timeout=5)
            await publish(client, server.url, "slow", "kept for later")
            status = (await client.get(f"{server.url}/sse/users/slow")).json()
            assert status["pending"] > 0
    finally:
        slow.close()


async def test_sigterm_ends_every_stream_within_a_second_with_a_retry_hint(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=30)
    raw = open_raw_stream(server.port, "gus")
    try:
        async with Stream(server.url, "hal") as hal:
            await hal.next_message()
            raw.settimeout(5)
            assert b"connected" in raw.recv(4096)
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            assert await hal.ended(timeout=2)
            received = b""
            while chunk := raw.recv(4096):
                received += chunk
            assert time.monotonic() - started < 1.0
            assert b"retry: " in received
            assert server.wait(5) == 0
    finally:
        raw.close()
    log = server.log()
    assert "Traceback" not in log
    assert "Finished server process" in log


async def test_hundreds_of_abrupt_drops_leave_nothing_behind(start_server: ServerFactory) -> None:
    server = start_server()
    sockets = [open_raw_stream(server.port, f"drop{i % 50}") for i in range(300)]
    async with httpx.AsyncClient() as client:
        async with asyncio.timeout(10):
            while (await client.get(f"{server.url}/healthz")).json()["streams"] < 300:
                await asyncio.sleep(0.05)
        for sock in sockets:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()
        async with asyncio.timeout(10):
            while (await client.get(f"{server.url}/healthz")).json()["streams"] > 0:
                await asyncio.sleep(0.05)
        body = (await client.get(f"{server.url}/sse/users", params={"status": "connected"})).json()
        assert body["users"] == []
        async with Stream(server.url, "drop1") as again:
            greeting = await again.next_message()
            assert greeting is not None, (again.status_code, again.error_body, again.error)
