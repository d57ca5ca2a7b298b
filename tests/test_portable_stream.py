"""What an open portable stream keeps: one task, and no FastAPI request chain.

Each case runs a real uvicorn server in the test's own loop, opens streams over
sockets, then looks at the tasks of the loop: a stream must be its ASGI task alone (no
disconnect watcher beside it), and that task must not be suspended inside FastAPI's
``request_response`` (its ``Request``, dependency results and exit stacks).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from ssehub import Hub, MemoryStore, create_router
from ssehub.app import create_app
from ssehub.front.http1 import HttpProtocol
from ssehub.server import uvicorn_config
from ssehub.settings import Settings
from tests.conftest import free_port, serving

pytestmark = pytest.mark.anyio

STREAMS = 3


def served_app(port: int) -> tuple[uvicorn.Config, Hub]:
    """``ssehub serve --portable`` under a root path, as behind a proxy."""
    settings = Settings(store="memory://", port=port, keepalive=60, portable=True)
    app = create_app(settings)
    config = uvicorn_config(settings, app)
    config.root_path = "/hub"
    return config, app.state.hub


def library_app(port: int) -> tuple[uvicorn.Config, Hub]:
    """ssehub's router included under a prefix in another FastAPI app."""
    hub = Hub(MemoryStore(), keepalive=60)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.running():
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_router(hub), prefix="/hub")
    config = uvicorn.Config(app, port=port, http="httptools", log_config=None, access_log=False)
    return config, hub


def awaited_chain(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    coro: Any = task.get_coro()
    while inspect.iscoroutine(coro):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return names


@pytest.mark.parametrize(
    ("make", "path"), [(served_app, "/sse/connect/"), (library_app, "/hub/sse/connect/")]
)
async def test_an_open_portable_stream_is_one_task_outside_fastapis_request_chain(
    make: Callable[[int], tuple[uvicorn.Config, Hub]], path: str
) -> None:
    port = free_port()
    config, hub = make(port)
    async with serving(config) as server, contextlib.AsyncExitStack() as sockets:
        await asyncio.sleep(0.1)
        before = asyncio.all_tasks()
        for i in range(STREAMS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sockets.callback(writer.close)
            writer.write(f"GET {path}u{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            async with asyncio.timeout(5):
                await reader.readuntil(f"data: User 'u{i}' connected\n\n".encode())
        await asyncio.sleep(0.2)
        new = asyncio.all_tasks() - before
        assert hub.open_streams == STREAMS
        assert len(new) == STREAMS, [awaited_chain(task) for task in new]
        assert new == server.server_state.tasks  # uvicorn's ASGI tasks, nothing beside
        for task in new:
            chain = awaited_chain(task)
            assert "serve_stream" in chain, chain
            assert not [name for name in chain if "request_response" in name], chain
    async with asyncio.timeout(5):
        while hub.open_streams:
            await asyncio.sleep(0.02)


async def test_a_mounted_stream_with_a_request_pipelined_behind_is_released_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Plain uvicorn stops reading the socket when a request is pipelined behind an
    # unfinished answer, so a stream's client leaving goes unseen; a host app that runs
    # uvicorn with ssehub's HttpProtocol keeps reading, and the stream ends at once.
    port = free_port()
    config, hub = library_app(port)
    config.http = HttpProtocol
    async with serving(config):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /hub/sse/connect/ann HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /hub/sse/users/ann HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        async with asyncio.timeout(5):
            await reader.readuntil(b"connected\n\n")
        assert hub.open_streams == 1
        writer.close()
        async with asyncio.timeout(2):  # far less than the keep-alive interval (60 s)
            while hub.open_streams:
                await asyncio.sleep(0.02)
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
