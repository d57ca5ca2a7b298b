"""Two real nodes ride out a Redis outage: Redis is stopped, then started again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ssehub.events import event_key
from tests.conftest import ServerFactory
from tests.redis_server import RedisServer, store_url
from tests.sse import Stream
from tests.test_multinode import eventually, greeted, publish

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone, that keeps its data across a restart."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, persistent=True).start()
    yield server
    server.stop()


async def test_while_redis_is_down_streams_stay_open_publishes_get_503_and_nothing_is_lost(
    start_server: ServerFactory, own_redis: RedisServer
) -> None:
    store = store_url("outage", base=own_redis.url, reconnect_max=0.2, ping_interval=0.5)
    node_a, node_b = start_server(store=store), start_server(store=store)
    try:
        async with httpx.AsyncClient(timeout=10) as client, Stream(node_a.url, "otto") as otto:
            await greeted(otto)
            before = await publish(client, node_b, "otto", "before")
            message = await otto.next_message()
            assert message is not None
            assert message.id == before

            own_redis.stop()
            stopped_at = time.monotonic()
            for node in (node_a, node_b):
                started = time.monotonic()
                refused = await client.post(
                    f"{node.url}/sse/users/otto/messages", json={"data": "x"}
                )
                assert refused.status_code == 503
                assert refused.json()["detail"]
                assert time.monotonic() - started < 3.0
                ready = await client.get(f"{node.url}/readyz")
                assert ready.status_code == 503
                assert ready.json()["status"] == "degraded"
                # A new stream: tools get the 503 JSON; an EventSource (which gives up
                # for good on anything but a 200 stream) gets a retry hint instead.
                tool = await client.get(f"{node.url}/sse/connect/newcomer")
                assert tool.status_code == 503
                assert tool.json()["detail"]
                browser = await client.get(
                    f"{node.url}/sse/connect/newcomer", headers={"Accept": "text/event-stream"}
                )
                assert browser.status_code == 200
                assert browser.headers["content-type"].startswith("text/event-stream")
                assert "retry: " in browser.text
            while time.monotonic() - stopped_at < 2.0:  # a short outage, a few retries long
                assert await otto.next() is not None, "the stream ended during the outage"

            own_redis.start()

            async def ready_b() -> bool:
                return (await client.get(f"{node_b.url}/readyz")).status_code == 200

            # Publish as soon as node B is back, while node A may still be reconnecting:
            # A then finds these messages by reading the stream after the last id it saw.
            await eventually(ready_b, timeout=15.0)
            after = [await publish(client, node_b, "otto", f"after{i}") for i in range(3)]
            resumed = await otto.messages(3, timeout=15.0)
            assert [m.id for m in resumed] == after
            assert [m.data for m in resumed] == ["after0", "after1", "after2"]
            assert event_key(before) < event_key(after[0])

        # What was accepted before the outage survived the restart of Redis.
        async with Stream(node_a.url, "otto", headers={"Last-Event-ID": "0-1"}) as replay:
            await greeted(replay)
            assert [m.id for m in await replay.messages(4)] == [before, *after]
    except BaseException:
        for node in (node_a, node_b):  # shown with the failure
            print(f"--- log of {node.url}\n{node.log()}")
        raise
