"""The fast path's seam in uvicorn: which requests it takes, and what it writes."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from ssehub.app import create_app
from ssehub.fast import StreamProtocol, chunk
from ssehub.server import uvicorn_config
from ssehub.settings import Settings
from tests.conftest import ReadyServer, ServerFactory, free_port

pytestmark = pytest.mark.anyio

GREETING = b"data: User 'ann' connected\n\n"


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5.0) -> bytes:
    """Bytes from ``reader`` up to and including ``marker``."""
    async with asyncio.timeout(timeout):
        return await reader.readuntil(marker)


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_fast_stream_is_chunked_and_starts_with_the_greeting(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with raw(server.url) as (reader, writer):
        writer.write(b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked\r\n" in head
        assert b"content-type: text/event-stream; charset=utf-8\r\n" in head
        assert await read_until(reader, GREETING + b"\r\n") == chunk(GREETING)


@pytest.mark.parametrize(
    ("request_head", "answer"),
    [
        (b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
         b"HTTP/1.1 200 OK"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK"),
        # Malformed at its last byte (no LF after the final CR): nothing follows the
        # error, so the server's close cannot reset the connection before the 400 is read.
        (b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\rX", b"HTTP/1.1 400 Bad Request"),
    ],
    ids=["stream", "app", "malformed"],
)  # fmt: skip
async def test_a_first_request_sent_a_byte_at_a_time_is_served_as_usual(
    start_server: ServerFactory, request_head: bytes, answer: bytes
) -> None:
    # The first request's head is read by the fast path's own parser: in pieces, it
    # is either taken as a stream or handed whole to uvicorn (which answers a 400).
    server = start_server()
    async with raw(server.url) as (reader, writer):
        for byte in request_head:
            writer.write(bytes([byte]))
            await writer.drain()
        assert (await read_until(reader, b"\r\n")).startswith(answer)


async def test_a_stream_opened_on_a_reused_connection_is_served(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with raw(server.url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        await read_until(reader, b"}")
        writer.write(b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_until(reader, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
        await read_until(reader, GREETING)


async def test_a_stream_pipelined_behind_another_request_is_answered_after_it(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with raw(server.url) as (reader, writer):
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        first = await read_until(reader, b"}")
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert b'"status":"ok"' in first
        assert (await read_until(reader, b"\r\n\r\n")).lstrip().startswith(b"HTTP/1.1 200 OK")
        await read_until(reader, GREETING)


async def test_an_http_1_0_client_gets_a_close_delimited_stream(
    start_server: ServerFactory,
) -> None:
    # HTTP/1.0 has no chunked coding (RFC 9112, 6.1): frames go bare, and the stream
    # ends when the connection does.
    server = start_server()
    async with raw(server.url) as (reader, writer):
        writer.write(b"GET /sse/connect/ann HTTP/1.0\r\n\r\n")
        head = await read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close\r\n" in head
        assert b"transfer-encoding" not in head.lower()
        assert await read_until(reader, GREETING) == GREETING


async def test_a_refused_stream_gets_the_json_error_of_the_app(
    start_server: ServerFactory,
) -> None:
    server = start_server("--max-connections-per-user", "1")
    async with raw(server.url) as (first, first_writer):
        first_writer.write(b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(first, GREETING)
        async with raw(server.url) as (reader, writer):
            writer.write(b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await read_until(reader, b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            async with asyncio.timeout(5):
                body = await reader.readexactly(length)
    assert head.startswith(b"HTTP/1.1 429 ")
    assert b"retry-after: 1" in head.lower()
    assert body == b'{"detail":"too many open streams for this user"}'


async def test_a_stream_request_with_a_trailing_slash_is_left_to_the_app(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{server.url}/sse/connect/a%2Fb")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "Not Found"}


async def test_streams_get_the_same_cors_headers_as_every_other_route(
    start_server: ServerFactory,
) -> None:
    server = start_server("--cors-origin", "https://app.example")
    origin = {"Origin": "https://app.example"}
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{server.url}/healthz", headers=origin)
        async with client.stream("GET", f"{server.url}/sse/connect/ann", headers=origin) as s:
            stream_headers = s.headers
        refused = await client.get(f"{server.url}/sse/connect/ann?last_event_id=x", headers=origin)
    for answer_headers in (stream_headers, refused.headers):
        for name in ("access-control-allow-origin", "vary"):
            assert answer_headers.get(name) == health.headers.get(name)
    assert stream_headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize("portable", [False, True])
async def test_a_fast_stream_holds_no_asgi_task_and_a_portable_one_does(portable: bool) -> None:
    settings = Settings(store="memory://", port=free_port(), keepalive=60, portable=portable)
    app = create_app(settings)
    server = ReadyServer(uvicorn_config(settings, app))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            await server.ready.wait()
        async with raw(f"http://127.0.0.1:{settings.port}") as (reader, writer):
            writer.write(b"GET /sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(reader, GREETING)
            takers = [c for c in server.server_state.connections if isinstance(c, StreamProtocol)]
            assert len(server.server_state.tasks) == (1 if portable else 0)
            assert len(takers) == (0 if portable else 1)
            app.state.hub.shutdown_streams()
            rest = await read_until(reader, b"\r\n0\r\n\r\n")
            hint = re.search(rb"retry: (\d+)\n\n\r\n0\r\n\r\n$", rest)
            assert hint is not None, rest
            assert 1000 <= int(hint[1]) <= 3000  # spread around the default 2000
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await serving
