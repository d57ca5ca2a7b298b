"""`ssehub.client` against real servers: events, reconnects, restarts, errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from ssehub.client import Event, EventStream, HubClient, HubUnreachable, SyncHubClient
from ssehub.exceptions import InvalidInput
from tests.conftest import ServerFactory, free_port

pytestmark = pytest.mark.anyio

FAST_RETRY = {"SSEHUB_RETRY_MS": "100"}


async def take(stream: EventStream, count: int, timeout: float = 10.0) -> list[Event]:
    found: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            found.append(event)
            if len(found) == count:
                break
    return found


async def wait_connected(client: HubClient, user_id: str, timeout: float = 10.0) -> None:
    # Polls the server's own view of the user: that is what the test waits for.
    async with asyncio.timeout(timeout):
        while (await client.status(user_id))["status"] != "connected":
            await asyncio.sleep(0.02)


async def test_a_stream_yields_messages_and_hides_greetings_and_keepalives_by_default(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=0.1)
    async with HubClient(server.url) as client, client.events("alice") as stream:
        consumer = asyncio.create_task(take(stream, 2))
        await wait_connected(client, "alice")
        await asyncio.sleep(0.3)  # let some keep-alives go by: they must not show up
        first = await client.send("alice", "hello")
        second = await client.send("alice", {"n": 1}, event="report")
        events = await consumer
    assert events == [
        Event("message", "hello", first),
        Event("report", '{"n":1}', second),
    ]
    assert events[1].json() == {"n": 1}
    assert stream.last_event_id == second


async def test_greetings_and_keepalives_are_yielded_when_asked_for(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=0.1)
    async with HubClient(server.url) as client:
        stream = client.events("bob", greetings=True, keepalives=True)
        events = await take(stream, 3)
        await stream.aclose()
    assert events[0] == Event("connected", "User 'bob' connected")
    assert events[1:] == [Event("keepalive", "<3: Keep alive")] * 2


async def test_the_stream_resumes_across_a_server_restart_without_loss_or_repeats(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'hub.db'}"
    server = start_server(store=store, env=FAST_RETRY)
    async with HubClient(server.url) as client, client.events("carol", backoff=0.05) as stream:
        consumer = asyncio.create_task(take(stream, 4, timeout=30))
        await wait_connected(client, "carol")
        sent = [await client.send("carol", "one"), await client.send("carol", "two")]

        server.stop()
        restarted = start_server(store=store, env=FAST_RETRY, port=server.port)
        sent.append(await client.send("carol", "three"))  # perhaps before carol is back
        await wait_connected(client, "carol")
        sent.append(await client.send("carol", "four"))
        events = await consumer

    assert [e.data for e in events] == ["one", "two", "three", "four"]
    assert [e.id for e in events] == sent
    assert stream.reconnects >= 1
    assert stream.retry is not None
    assert 0.05 <= stream.retry <= 0.15  # the retry: hint the server sent as it stopped
    assert restarted.port == server.port


async def test_a_reset_event_says_the_history_after_the_resume_point_is_gone(
    start_server: ServerFactory,
) -> None:
    server = start_server("--history-max-events", "2")
    async with HubClient(server.url) as client:
        ids = [await client.send("dave", f"m{i}") for i in range(5)]
        stream = client.events("dave", last_event_id=ids[0])
        events = await take(stream, 3)
        await stream.aclose()
    assert events[0].event == "reset"
    assert events[0].json() == {"reason": "history_trimmed", "last_event_id": ids[0]}
    assert [(e.data, e.id) for e in events[1:]] == [("m3", ids[3]), ("m4", ids[4])]


async def test_the_hubs_disconnect_ends_the_iteration(start_server: ServerFactory) -> None:
    server = start_server()
    async with HubClient(server.url) as client:
        stream = client.events("erin")
        consumer = asyncio.create_task(take(stream, 99))
        await wait_connected(client, "erin")
        await client.http.get("/sse/disconnect/erin")
        events = await consumer
    assert [e.event for e in events] == ["disconnected"]


async def test_a_refused_stream_raises_at_once_instead_of_retrying(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with HubClient(server.url) as client:
        with pytest.raises(InvalidInput, match="400"):
            await take(client.events("x" * 300), 1)


async def test_an_unreachable_hub_raises_after_the_allowed_attempts() -> None:
    async with HubClient(f"http://127.0.0.1:{free_port()}") as client:
        stream = client.events("frank", backoff=0.01, max_attempts=3)
        with pytest.raises(HubUnreachable):
            await take(stream, 1)
        assert stream.reconnects == 2
        with pytest.raises(HubUnreachable):
            await client.send("frank", "hi")


def test_the_sync_client_sends_and_follows_a_stream(start_server: ServerFactory) -> None:
    server = start_server()
    received: list[Event] = []
    with SyncHubClient(server.url) as client:
        events = client.events("gina", greetings=True)
        connected = threading.Event()

        def publish() -> None:
            connected.wait(10)
            with SyncHubClient(server.url) as publisher:
                publisher.send("gina", "first")
                publisher.broadcast("everyone")

        sender = threading.Thread(target=publish)
        sender.start()
        for event in events:
            if event.event == "connected":
                connected.set()
                continue
            received.append(event)
            if len(received) == 2:
                break
        sender.join(10)
        assert client.status("gina")["status"] in ("connected", "disconnected")
    assert [e.data for e in received] == ["first", "everyone"]
    assert httpx.get(server.url + "/healthz").status_code == 200


async def test_a_silent_connection_is_replaced_after_the_read_timeout(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=30)  # nothing on the wire for longer than the timeout
    states: asyncio.Queue[str] = asyncio.Queue()
    async with HubClient(server.url) as client:
        stream = client.events(
            "hal", read_timeout=0.3, backoff=0.05, on_state=lambda s, d: states.put_nowait(s)
        )
        reader = asyncio.create_task(take(stream, 1))
        async with asyncio.timeout(10):
            seen = [await states.get() for _ in range(3)]
        assert seen == ["connected", "reconnecting", "connected"]
        event_id = await client.send("hal", "still here")
        assert await reader == [Event("message", "still here", event_id)]
        await stream.aclose()
