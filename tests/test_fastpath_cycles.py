"""A fast stream's objects are freed by reference counting, not by the cyclic collector.

A burst of connects or closes that leaves reference cycles behind makes the collector
walk them all in the middle of deliveries. The case runs a real uvicorn server with the
fast path in the test's own loop, opens and closes streams (and one request the app
answers), and then asks the collector what it would have had to free.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from ssehub import Hub
from ssehub.app import create_app
from ssehub.connection import Connection
from ssehub.fast import EntryProtocol, StreamProtocol
from ssehub.server import uvicorn_config
from ssehub.settings import Settings
from tests.conftest import free_port, serving

pytestmark = pytest.mark.anyio

STREAMS = 20
SERVER_TYPES = (EntryProtocol, StreamProtocol, Connection)


@contextlib.asynccontextmanager
async def fast_server(port: int) -> AsyncIterator[Hub]:
    settings = Settings(store="memory://", port=port, keepalive=60)
    app = create_app(settings)
    async with serving(uvicorn_config(settings, app)):
        yield app.state.hub


@contextlib.contextmanager
def collector_off() -> Iterator[list[object]]:
    """Yield what the collector finds unreachable at the end (the collector paused)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def open_stream(port: int, user_id: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse/connect/{user_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with asyncio.timeout(5):
        await reader.readuntil(f"data: User '{user_id}' connected\n\n".encode())
    return writer


async def ask_health(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_streams_opened_and_closed_leave_no_cycles_of_the_servers_objects() -> None:
    port = free_port()
    async with fast_server(port) as hub:
        await ask_health(port)  # the app's first answer builds what it keeps
        with collector_off() as garbage:
            writers = [await open_stream(port, f"u{i}") for i in range(STREAMS)]
            await ask_health(port)  # a request the entry protocol hands to the app
            for writer in writers:
                writer.close()
            async with asyncio.timeout(5):
                while hub.open_streams:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
        left = [type(obj).__qualname__ for obj in garbage if isinstance(obj, SERVER_TYPES)]
        assert left == []
