"""One table between errors and HTTP statuses; the client retries only what may pass."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from ssehub.api import error_response
from ssehub.client import HubClient
from ssehub.client._errors import transient
from ssehub.exceptions import (
    HTTP_STATUS,
    InvalidInput,
    ServerFull,
    SsehubError,
    StoreUnavailable,
    error_class,
    http_status,
)
from tests.conftest import ReadyServer, ServerFactory, free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("kind", list(HTTP_STATUS), ids=lambda kind: kind.__name__)
def test_the_server_answers_each_error_with_its_status_and_the_client_reads_it_back(
    kind: type[SsehubError],
) -> None:
    answer = error_response(kind("no"))
    assert answer.status_code == HTTP_STATUS[kind] == http_status(kind("no"))
    assert orjson.loads(answer.body) == {"detail": "no"}
    back = error_class(answer.status_code)
    # 503 is shared: the client cannot tell a full server from a store that is away.
    assert back is (StoreUnavailable if kind is ServerFull else kind)


def test_an_error_outside_the_table_is_a_500_and_an_unknown_status_the_base_error() -> None:
    class Odd(SsehubError):
        pass

    assert http_status(Odd()) == 500
    assert error_class(418) is SsehubError
    assert error_class(404) is InvalidInput


def answered(status: int, retry_after: float | None = None) -> SsehubError:
    error = error_class(status)(str(status))
    error.status, error.retry_after = status, retry_after
    return error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (answered(503, 1.0), True),
        (answered(502), True),
        (answered(429, 1.0), True),
        (answered(429), False),  # a limit that does not say when it lifts
        (answered(400), False),
        (answered(401), False),
        (answered(404), False),
        (answered(405), False),
        (answered(418), False),
        (answered(500), False),
    ],
    ids=lambda value: str(getattr(value, "status", value)),
)
def test_only_answers_known_to_pass_are_retried(error: SsehubError, retried: bool) -> None:
    assert transient(error) is retried


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = ReadyServer(uvicorn.Config(app, port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            await server.ready.wait()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_stream_answered_with_an_unknown_4xx_raises_at_once() -> None:
    app = FastAPI()

    @app.post("/odd/sse/connect/{user_id}")
    async def only_post(user_id: str) -> None:  # a GET here is a 405
        return None

    async with serving(app) as url, HubClient(url + "/odd") as client:
        stream = client.events("ann", backoff=0.01)
        with pytest.raises(SsehubError, match="405") as raised:
            async with asyncio.timeout(15):
                await anext(stream)
    assert raised.value.status == 405
    assert stream.reconnects == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_429_with_retry_after_is_retried_until_the_limit_lifts(
    start_server: ServerFactory,
) -> None:
    server = start_server("--max-connections-per-user", "1")
    states: list[str] = []
    async with HubClient(server.url) as client:
        first = client.events("bea", greetings=True)
        assert (await anext(first)).event == "connected"
        second = client.events("bea", on_state=lambda state, detail: states.append(detail))
        reader = asyncio.create_task(anext(second))
        async with asyncio.timeout(10):
            while not states:
                await asyncio.sleep(0.02)
        assert "429" in states[0]
        await first.aclose()
        async with asyncio.timeout(10):
            while not second.connected:
                await asyncio.sleep(0.02)
        sent = await client.send("bea", "through")
        async with asyncio.timeout(10):
            event = await reader
        await second.aclose()
    assert (event.data, event.id) == ("through", sent)
