"""Several real `ssehub serve` processes on one Redis behave as one hub."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from ssehub.events import event_key
from tests.conftest import ServerFactory, ServerProcess
from tests.redis_server import forget_prefix, store_url
from tests.sse import Stream

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@contextlib.contextmanager
def unique_prefix() -> Iterator[str]:
    """A store URL on the shared Redis under a prefix no other test uses; cleaned after."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    try:
        yield store_url(prefix)
    finally:
        forget_prefix(prefix)


@pytest.fixture
def store() -> Iterator[str]:
    """A store URL for the servers of one test."""
    with unique_prefix() as url:
        yield url


@pytest.fixture(scope="module", params=["fast", "portable"])
def nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes on one Redis, shared by the tests of this module that use distinct users."""
    factory = ServerFactory(tmp_path_factory.mktemp("nodes"))
    mode = ["--portable"] if request.param == "portable" else []
    with unique_prefix() as store:
        try:
            yield factory(*mode, store=store), factory(*mode, store=store)
        finally:
            factory.close()


async def publish(client: httpx.AsyncClient, server: ServerProcess, user: str, data: str) -> str:
    answer = await client.post(f"{server.url}/sse/users/{user}/messages", json={"data": data})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def status(client: httpx.AsyncClient, server: ServerProcess, user: str) -> dict[str, object]:
    answer = await client.get(f"{server.url}/sse/users/{user}")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> None:
    """Poll an observable condition until it holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:  # nothing to await: the state lives in another process
            if await check():
                return
            await asyncio.sleep(0.05)


async def greeted(stream: Stream) -> Stream:
    greeting = await stream.next_message()
    assert greeting is not None
    assert greeting.data.endswith("connected")
    return stream


async def test_a_message_published_on_one_node_reaches_the_users_streams_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient() as client,
        Stream(node_a.url, "alice") as on_a,
        Stream(node_b.url, "alice") as on_b,
    ):
        await greeted(on_a)
        await greeted(on_b)
        ids = [await publish(client, node_b, "alice", f"m{i}") for i in range(5)]
        for stream in (on_a, on_b):
            got = await stream.messages(5)
            assert [m.id for m in got] == ids
            assert [m.data for m in got] == [f"m{i}" for i in range(5)]
        assert [event_key(i) for i in ids] == sorted(event_key(i) for i in ids)


async def test_a_broadcast_reaches_the_connected_users_of_every_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient() as client,
        Stream(node_a.url, "ann") as ann,
        Stream(node_b.url, "ben") as ben,
        Stream(node_a.url, "cid") as cid_on_a,
        Stream(node_b.url, "cid") as cid_on_b,
    ):
        streams = {"ann": [ann], "ben": [ben], "cid": [cid_on_a, cid_on_b]}
        for stream in (ann, ben, cid_on_a, cid_on_b):
            await greeted(stream)

        async def cid_on_both() -> bool:
            return (await status(client, node_a, "cid"))["connections"] == 2

        await eventually(cid_on_both)
        answer = await client.post(f"{node_a.url}/sse/broadcast", json={"data": "to all"})
        assert answer.status_code == 202, answer.text
        for user, opened in streams.items():
            for stream in opened:
                message = await stream.next_message()
                assert message is not None
                assert message.data == "to all"
            # Once only, though cid is connected to both nodes: the next is the next.
            await publish(client, node_b, user, "next")
            for stream in opened:
                message = await stream.next_message()
                assert message is not None
                assert message.data == "next"


async def test_every_node_reports_the_same_status_of_a_user(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with httpx.AsyncClient() as client:
        for node in (node_a, node_b):
            assert (await status(client, node, "cleo"))["status"] == "unknown"
        async with Stream(node_a.url, "cleo") as first, Stream(node_b.url, "cleo") as second:
            await greeted(first)
            await greeted(second)
            seen = [await status(client, node, "cleo") for node in (node_a, node_b)]
            assert [s["status"] for s in seen] == ["connected", "connected"]
            assert [s["connections"] for s in seen] == [2, 2]
            users = (await client.get(f"{node_b.url}/sse/users?status=connected")).json()
            assert "cleo" in str(users)

        async def disconnected_everywhere() -> bool:
            seen = [await status(client, node, "cleo") for node in (node_a, node_b)]
            return all(s["status"] == "disconnected" for s in seen)

        await eventually(disconnected_everywhere)
        await publish(client, node_b, "cleo", "while away")
        for node in (node_a, node_b):
            assert (await status(client, node, "cleo"))["pending"] == 1


async def test_a_disconnect_asked_of_one_node_closes_the_users_streams_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    node_a, node_b = nodes
    async with (
        httpx.AsyncClient() as client,
        Stream(node_a.url, "dora") as on_a,
        Stream(node_b.url, "dora") as on_b,
    ):
        await greeted(on_a)
        await greeted(on_b)
        answer = await client.get(f"{node_b.url}/sse/disconnect/dora")
        assert answer.status_code == 200
        assert await on_a.ended()
        assert await on_b.ended()


async def test_workers_share_one_port_and_deliver_to_streams_held_by_any_of_them(
    store: str, start_server: ServerFactory
) -> None:
    server = start_server("--workers", "2", store=store, start=False)
    server.start(timeout=60)  # two fresh interpreters: slow on a busy machine

    async def both_workers_ready() -> bool:
        return server.log().count("ssehub ready") >= 2

    await eventually(both_workers_ready, timeout=60.0)
    streams: list[Stream] = []
    async with httpx.AsyncClient() as client:
        try:
            # Open streams until a worker reports holding only some of them: then
            # both workers hold streams of the user.
            split = False
            while not split and len(streams) < 12:
                stream = Stream(server.url, "wendy")
                streams.append(stream)
                await greeted(await stream.__aenter__())
                for _ in range(20):
                    async with httpx.AsyncClient() as fresh:  # a new connection each time
                        held = (await fresh.get(f"{server.url}/healthz")).json()["streams"]
                    if 0 < held < len(streams):
                        split = True
                        break
            assert split, "every stream landed on one worker"
            ids = [await publish(client, server, "wendy", f"w{i}") for i in range(4)]
            for stream in streams:
                assert [m.id for m in await stream.messages(4)] == ids
            assert (await status(client, server, "wendy"))["connections"] == len(streams)
        finally:
            for stream in streams:
                await stream.close()


async def test_when_a_node_is_killed_its_clients_resume_on_another_and_lose_nothing(
    store: str, start_server: ServerFactory
) -> None:
    doomed, survivor = start_server(store=store), start_server(store=store)
    async with httpx.AsyncClient() as client:
        async with Stream(doomed.url, "kim") as kim:
            await greeted(kim)
            first = await publish(client, survivor, "kim", "before")
            message = await kim.next_message()
            assert message is not None
            assert message.id == first
            # Let the keep-alive refresh presence, so its time-to-live follows the tick.
            for _ in range(3):
                assert await kim.next() is not None
            assert (await status(client, survivor, "kim"))["status"] == "connected"
            doomed.signal(signal.SIGKILL)
            assert await kim.ended()
        missed = [await publish(client, survivor, "kim", f"during{i}") for i in range(3)]

        async def disconnected() -> bool:
            return (await status(client, survivor, "kim"))["status"] == "disconnected"

        # The dead node's presence expires after three keep-alives, and at least 3 s.
        await eventually(disconnected, timeout=10.0)
        headers = {"Last-Event-ID": first}
        async with Stream(survivor.url, "kim", headers=headers) as again:
            await greeted(again)
            replayed = await again.messages(3)
            assert [m.id for m in replayed] == missed
            assert [m.data for m in replayed] == ["during0", "during1", "during2"]
