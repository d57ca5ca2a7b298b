"""Presence across real `ssehub serve` nodes on one Redis: one event per transition,
whichever node holds the streams, also when a node is killed."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.sse import Stream
from tests.test_multinode import greeted, publish, unique_prefix
from tests.test_presence import PresenceStream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def store() -> Iterator[str]:
    with unique_prefix() as url:
        yield url


async def emitted(
    client: httpx.AsyncClient, servers: list[ServerProcess], kind: str, expected: int
) -> int:
    """Presence events of one type emitted by all the nodes together (their metrics).

    Waits up to 10 s for ``expected``: a feed may hear an event (through the store)
    before the node that emitted it has counted it; then waits a little for more.
    """
    deadline = time.monotonic() + 10.0
    while True:
        total = 0
        for server in servers:
            text = (await client.get(f"{server.url}/metrics")).text
            for line in text.splitlines():
                if line.startswith(f'ssehub_presence_events_total{{type="{kind}"}}'):
                    total += int(float(line.split()[-1]))
        if total > expected or time.monotonic() > deadline:
            return total
        if total == expected:
            deadline = min(deadline, time.monotonic() + 0.5)  # none more comes
        await asyncio.sleep(0.1)


async def test_a_user_on_two_nodes_is_online_once_and_offline_once_both_closed(
    store: str, start_server: ServerFactory
) -> None:
    a = start_server("--offline-grace", "1.5", store=store)
    b = start_server("--offline-grace", "1.5", store=store)
    async with PresenceStream(b.url) as feed, httpx.AsyncClient() as client:
        on_a = await greeted(await Stream(a.url, "alice").__aenter__())
        _, online = await feed.presence()
        assert (online["type"], online["user_id"]) == ("user.online", "alice")
        async with Stream(b.url, "alice") as on_b:
            await greeted(on_b)
            await on_a.close()  # one node still holds a stream: still online
            async with Stream(a.url, "alice") as reload:  # and a reload on the other
                await greeted(reload)
        _, offline = await feed.presence(timeout=20.0)  # a grace, a tick, a loaded machine
        assert (offline["type"], offline["user_id"]) == ("user.offline", "alice")
        async with Stream(a.url, "alice") as back:
            await greeted(back)
            _, again = await feed.presence()
            assert again["type"] == "user.online"
            # Counted while this stream is open: once it closes, a second offline is due.
            assert await emitted(client, [a, b], "user.online", 2) == 2
            assert await emitted(client, [a, b], "user.offline", 1) == 1


async def test_the_users_of_a_killed_node_go_offline_once_its_presence_expired(
    store: str, start_server: ServerFactory
) -> None:
    doomed = start_server("--offline-grace", "0.5", store=store)
    survivor = start_server("--offline-grace", "0.5", store=store)
    async with PresenceStream(survivor.url) as feed:
        async with Stream(doomed.url, "kim") as kim:
            await greeted(kim)
            _, online = await feed.presence()
            assert (online["type"], online["user_id"]) == ("user.online", "kim")
            # Let the keep-alive refresh presence, so its time-to-live follows the tick.
            for _ in range(4):
                assert await kim.next() is not None
            doomed.signal(signal.SIGKILL)
            assert await kim.ended()
        # Presence lives three keep-alives, and at least 3 s.
        _, offline = await feed.presence(timeout=15.0)
        assert (offline["type"], offline["user_id"]) == ("user.offline", "kim")


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_new_tab_on_another_node_gets_nothing_another_tab_already_got(
    store: str, start_server: ServerFactory
) -> None:
    a, b = start_server(store=store), start_server(store=store)
    async with httpx.AsyncClient() as client, Stream(a.url, "tess") as first:
        await greeted(first)
        seen = [await publish(client, a, "tess", f"m{i}") for i in range(3)]
        assert [m.id for m in await first.messages(3)] == seen
        async with Stream(b.url, "tess") as second:
            await greeted(second)
            fresh = await publish(client, b, "tess", "new")
            message = await second.next_message()
            assert message is not None
            assert message.id == fresh


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_message_accepted_on_one_node_and_delivered_on_another_is_delivered(
    store: str, start_server: ServerFactory
) -> None:
    a = start_server("--undelivered-after", "0.5", store=store)
    b = start_server("--undelivered-after", "0.5", store=store)
    async with (
        PresenceStream(b.url) as feed,
        httpx.AsyncClient() as client,
        Stream(b.url, "ann") as ann,
    ):
        await greeted(ann)
        delivered = await publish(client, a, "ann", "to the other node")
        message = await ann.next_message()
        assert message is not None
        assert message.id == delivered
        lost = await publish(client, a, "nobody-here", "lost")
        while True:
            _, body = await feed.presence()
            if body["type"] == "message.undelivered":
                break
        assert body["user_id"] == "nobody-here"
        assert body["message"] == {"id": lost, "event": None, "data": "lost"}
        assert await emitted(client, [a, b], "message.undelivered", 1) == 1
