"""The Idempotency-Key header: a repeated publish answers the first answer, once.

Runs against a real server on every store (memory, SQLite, Redis).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.redis_server import forget_prefix, store_url
from tests.sse import Stream
from tests.test_multinode import greeted

pytestmark = pytest.mark.anyio


@pytest.fixture(
    scope="module", params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server on each kind of store, shared by the tests (each uses its own users)."""
    directory = tmp_path_factory.mktemp("idempotency")
    factory = ServerFactory(directory)
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    urls = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{directory / 'hub.db'}",
        "redis": store_url(prefix),
    }
    try:
        yield factory(store=urls[str(request.param)])
    finally:
        factory.close()
        if request.param == "redis":
            forget_prefix(prefix)


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


async def pending(client: httpx.AsyncClient, server: ServerProcess, user_id: str) -> int:
    answer = await client.get(f"{server.url}/sse/users/{user_id}")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["pending"])


async def test_a_message_repeated_with_its_key_answers_the_first_id_and_is_kept_once(
    server: ServerProcess,
) -> None:
    alice, headers = user(), key()
    url = f"{server.url}/sse/users/{alice}/messages"
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(url, json={"data": "hi"}, headers=headers)
        again = await client.post(url, json={"data": "hi"}, headers=headers)
        other = await client.post(url, json={"data": "hi"})
        assert first.status_code == again.status_code == other.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert other.json()["id"] != first.json()["id"]
        assert await pending(client, server, alice) == 2


async def test_a_batch_repeated_with_its_key_answers_the_first_ids_and_is_kept_once(
    server: ServerProcess,
) -> None:
    users, headers = [user() for _ in range(3)], key()
    body = {"messages": [{"user_id": u, "data": i} for i, u in enumerate(users * 2)]}
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [
            await client.post(f"{server.url}/sse/messages", json=body, headers=headers)
            for _ in range(3)
        ]
        assert {a.status_code for a in answers} == {202}
        assert answers[0].json()["count"] == 6
        assert answers[1].json() == answers[2].json() == answers[0].json()
        for u in users:
            assert await pending(client, server, u) == 2


async def test_concurrent_repeats_of_one_key_publish_once(server: ServerProcess) -> None:
    alice, headers = user(), key()
    url = f"{server.url}/sse/users/{alice}/messages"
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(url, json={"data": "x"}, headers=headers) for _ in range(8))
        )
        assert {a.status_code for a in answers} == {202}
        assert len({a.json()["id"] for a in answers}) == 1
        assert await pending(client, server, alice) == 1


async def test_a_broadcast_repeated_with_its_key_reaches_a_stream_once(
    server: ServerProcess,
) -> None:
    bob, headers = user(), key()
    async with httpx.AsyncClient(timeout=10) as client, Stream(server.url, bob) as stream:
        await greeted(stream)
        for _ in range(2):
            answer = await client.post(
                f"{server.url}/sse/broadcast", json={"data": "all"}, headers=headers
            )
            assert answer.status_code == 202, answer.text
        marker = await client.post(f"{server.url}/sse/users/{bob}/messages", json={"data": "end"})
        assert marker.status_code == 202
        seen: list[str] = []
        while not seen or seen[-1] != "end":
            message = await stream.next_message()
            assert message is not None
            seen.append(message.data)
        assert seen == ["all", "end"]


async def test_a_key_reused_for_another_body_answers_409_json(server: ServerProcess) -> None:
    alice, headers = user(), key()
    url = f"{server.url}/sse/users/{alice}/messages"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(url, json={"data": "a"}, headers=headers)).status_code == 202
        reused = await client.post(url, json={"data": "b"}, headers=headers)
        assert reused.status_code == 409
        assert reused.headers["content-type"] == "application/json"
        assert "Idempotency-Key" in reused.json()["detail"]
        # The same content with other spacing and key order is the same request.
        same = await client.post(
            url,
            content=b'{ "data" : "a" }',
            headers={**headers, "content-type": "application/json"},
        )
        assert same.status_code == 202
        assert await pending(client, server, alice) == 1


async def test_a_malformed_key_answers_400_json(server: ServerProcess) -> None:
    url = f"{server.url}/sse/users/{user()}/messages"
    async with httpx.AsyncClient(timeout=10) as client:
        for bad in (b"x" * 256, "caf\u00e9".encode()):
            answer = await client.post(url, json={"data": "a"}, headers={b"Idempotency-Key": bad})
            assert answer.status_code == 400
            assert "Idempotency-Key" in answer.json()["detail"]
