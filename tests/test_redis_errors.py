"""A store error is a 503 JSON with Retry-After, never a 500; appends are safe to retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from ssehub import idempotency
from ssehub.stores.redis import RedisStore
from tests.conftest import ServerFactory
from tests.redis_proxy import DroppingProxy
from tests.redis_server import forget_prefix, redis_url
from tests.stores.conftest import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def proxy() -> AsyncIterator[DroppingProxy]:
    """A proxy in front of the shared Redis."""
    target = urlsplit(redis_url())
    async with DroppingProxy(target.hostname or "127.0.0.1", target.port or 6379) as running:
        yield running


async def test_publishes_through_a_proxy_that_drops_connections_answer_503_json_never_500(
    start_server: ServerFactory, proxy: DroppingProxy
) -> None:
    server = start_server(store=f"redis://127.0.0.1:{proxy.port}/0?prefix=t-proxy")
    answers: list[httpx.Response] = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def publish_for(user: str, seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    url = f"{server.url}/sse/users/{user}/messages"
                    answers.append(await client.post(url, json={"data": "x"}))

            load = asyncio.gather(*(publish_for(f"p{i}", 3.0) for i in range(10)))
            await asyncio.sleep(1.0)  # some publishes went through; pooled connections
            proxy.drop()  # ... now all die, and new ones are accepted and dropped
            await load
            refused = [a for a in answers if a.status_code != 202]
            assert refused, "the proxy dropped nothing"
            for answer in refused:
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/json"
                assert answer.headers["retry-after"]
                assert answer.json()["detail"]
            proxy.forward()
            async with asyncio.timeout(10):
                while True:  # the pool replaces its dropped connections
                    url = f"{server.url}/sse/users/p0/messages"
                    if (await client.post(url, json={"data": "y"})).status_code == 202:
                        break
                    await asyncio.sleep(0.1)
        assert "Traceback" not in server.log()
    finally:
        forget_prefix("t-proxy")


async def test_an_append_run_again_with_its_intent_appends_nothing_and_answers_the_first_ids() -> (
    None
):
    # A publish Redis applied but whose answer was lost (a 503), retried with its key.
    store = RedisStore.from_url(redis_url() + "?prefix=t-intent")
    listener = RecordingListener()
    store.bind(listener)
    await store.start()
    try:
        await store.watch("ann")
        token = idempotency._current.set(idempotency.Intent("k1", "f1"))
        try:
            first = await store.append_many([("ann", b"data: 1\n"), ("bo", b"data: 2\n")])
            again = await store.append_many([("ann", b"data: 1\n"), ("bo", b"data: 2\n")])
        finally:
            idempotency._current.reset(token)
        assert again == first
        read = await store.read_after("ann", None, limit=10)
        assert [event.id for event in read.events] == [first[0].id]
        await listener.wait_until(lambda: len(listener.ids_of("ann")) >= 1)
        token = idempotency._current.set(idempotency.Intent("k1", "another body"))
        try:
            with pytest.raises(idempotency.IdempotencyKeyReused):
                await store.append_many([("ann", b"data: 3\n")])
        finally:
            idempotency._current.reset(token)
        assert len((await store.read_after("ann", None, limit=10)).events) == 1
    finally:
        await store.close()
        forget_prefix("t-intent")
