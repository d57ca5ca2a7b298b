"""Every limit, passed against a real server with small limits: a clear 4xx/429/503 JSON."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import STREAM_MODES, ServerFactory, ServerProcess
from tests.sse import Stream

pytestmark = pytest.mark.anyio

LIMITS = {
    "SSEHUB_MAX_CONNECTIONS_PER_USER": "2",
    "SSEHUB_MAX_CONNECTIONS": "3",
    "SSEHUB_MAX_PAYLOAD_BYTES": "100",
    "SSEHUB_MAX_BODY_BYTES": "2000",
    "SSEHUB_MAX_BATCH": "3",
    "SSEHUB_MAX_USER_ID_LENGTH": "8",
    "SSEHUB_HISTORY_MAX_EVENTS": "3",
}


@pytest.fixture(scope="module", params=STREAM_MODES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server with small limits per front door, shared by this module's tests."""
    factory = ServerFactory(tmp_path_factory.mktemp("limits"), request.param)
    try:
        yield factory(env=LIMITS)
    finally:
        factory.close()


async def open_streams(client: httpx.AsyncClient, url: str) -> int:
    return int((await client.get(f"{url}/healthz")).json()["streams"])


async def wait_until_streams(client: httpx.AsyncClient, url: str, count: int) -> None:
    """Wait (bounded) until the server counts ``count`` open streams."""
    for _ in range(200):
        if await open_streams(client, url) == count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"server still has {await open_streams(client, url)} streams")


@contextlib.asynccontextmanager
async def opened(url: str, user: str) -> AsyncIterator[Stream]:
    async with Stream(url, user) as stream:
        assert stream.status_code == 200, stream.error_body
        yield stream


def refusal(stream: Stream) -> tuple[int | None, str]:
    return stream.status_code, httpx.Response(200, content=stream.error_body).json()["detail"]


async def test_a_users_third_stream_is_refused_with_429_and_a_reason(
    server: ServerProcess,
) -> None:
    async with opened(server.url, "alice"), opened(server.url, "alice"):
        async with Stream(server.url, "alice") as third:
            assert refusal(third) == (429, "too many open streams for this user")
            assert third.response_headers is not None
            assert third.response_headers["retry-after"] == "1"
        async with opened(server.url, "bob") as bob:  # other users are not affected
            assert (await bob.next_message()) is not None
    async with httpx.AsyncClient() as client:
        await wait_until_streams(client, server.url, 0)
    async with opened(server.url, "alice"):
        pass  # room again once the others closed


async def test_a_stream_past_the_servers_total_is_refused_with_503(
    server: ServerProcess,
) -> None:
    async with (
        opened(server.url, "u1"),
        opened(server.url, "u2"),
        opened(server.url, "u3"),
        Stream(server.url, "u4") as fourth,
    ):
        assert refusal(fourth) == (503, "too many open streams on this server")
    async with httpx.AsyncClient() as client:
        await wait_until_streams(client, server.url, 0)
    async with opened(server.url, "u4"):
        pass


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/sse/connect/abcdefghi", 400, "longer than 8"),
        ("/sse/connect/a%01b", 400, "control characters"),
        ("/sse/connect/a%0Ab", 400, "control characters"),
        ("/sse/connect/a%C2%85b", 400, "control characters"),
        ("/sse/users/abcdefghi", 400, "longer than 8"),
        ("/sse/disconnect/abcdefghi", 400, "longer than 8"),
        ("/sse/task/abcdefghi", 400, "longer than 8"),
    ],
)
async def test_a_user_id_too_long_or_with_control_characters_is_refused(
    server: ServerProcess, path: str, status: int, detail: str
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.get(server.url + path)
        sent = await client.post(f"{server.url}/sse/users/abcdefghi/messages", json={"data": 1})
    assert answer.status_code == status
    assert detail in answer.json()["detail"]
    assert sent.status_code == 400


async def test_a_user_id_at_the_limit_is_accepted(server: ServerProcess) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{server.url}/sse/users/abcdefgh/messages", json={"data": 1})
    assert answer.status_code == 202


async def test_a_message_over_the_payload_limit_is_refused_with_413(
    server: ServerProcess,
) -> None:
    url = f"{server.url}/sse/users/carol/messages"
    async with httpx.AsyncClient() as client:
        fits = await client.post(url, json={"data": "x" * 100})
        too_big = await client.post(url, json={"data": "x" * 101})
        one = {"user_id": "carol", "data": "y" * 101}
        batch = await client.post(f"{server.url}/sse/messages", json={"messages": [one]})
        broadcast = await client.post(f"{server.url}/sse/broadcast", json={"data": "z" * 101})
    assert fits.status_code == 202
    for refused in (too_big, batch, broadcast):
        assert refused.status_code == 413
        assert "larger than 100 bytes" in refused.json()["detail"]


async def test_a_body_over_the_body_limit_is_refused_with_413_even_unannounced(
    server: ServerProcess,
) -> None:
    url = f"{server.url}/sse/messages"
    item = b'{"user_id": "d", "data": 1}'
    body = b'{"messages": [' + b",".join([item] * 100) + b"]}"

    async def chunked() -> AsyncIterator[bytes]:  # no content-length: the server counts
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    async with httpx.AsyncClient() as client:
        announced = await client.post(url, content=body)
        streamed = await client.post(url, content=chunked())
    for answer in (announced, streamed):
        assert answer.status_code == 413
        assert "larger than 2000 bytes" in answer.json()["detail"]


async def test_a_batch_over_the_batch_limit_is_refused_with_413(server: ServerProcess) -> None:
    message = {"user_id": "erin", "data": "m"}
    async with httpx.AsyncClient() as client:
        fits = await client.post(f"{server.url}/sse/messages", json={"messages": [message] * 3})
        too_many = await client.post(f"{server.url}/sse/messages", json={"messages": [message] * 4})
    assert fits.status_code == 202
    assert fits.json()["count"] == 3
    assert too_many.status_code == 413
    assert "at most 3 messages" in too_many.json()["detail"]


async def test_history_keeps_the_last_events_and_says_when_older_ones_are_gone(
    server: ServerProcess,
) -> None:
    user = f"h{server.port % 1000}"
    async with httpx.AsyncClient() as client:
        ids = [
            (
                await client.post(f"{server.url}/sse/users/{user}/messages", json={"data": f"m{n}"})
            ).json()["id"]
            for n in range(5)
        ]
    async with Stream(server.url, user, headers={"Last-Event-ID": ids[0]}) as stream:
        assert stream.status_code == 200
        events = await stream.messages(5)
    assert events[0].data == f"User '{user}' connected"
    assert events[1].event == "reset"
    assert [e.data for e in events[2:]] == ["m2", "m3", "m4"]
    assert [e.id for e in events[2:]] == ids[2:]
