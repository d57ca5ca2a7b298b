"""The sample's four routes, with its exact texts and timings."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.sse import Stream

pytestmark = pytest.mark.anyio


async def test_connect_greets_then_keeps_alive_on_schedule_without_ids(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=0.3)
    async with Stream(server.url, "alice") as alice:
        assert alice.response_headers is not None
        assert alice.response_headers["content-type"] == "text/event-stream; charset=utf-8"
        assert alice.response_headers["cache-control"] == "no-cache"
        assert alice.response_headers["x-accel-buffering"] == "no"
        greeting = await alice.next()
        assert greeting is not None
        assert (greeting.event, greeting.data, greeting.id) == (
            "message",
            "User 'alice' connected",
            "",
        )
        stamps = []
        for _ in range(4):
            keepalive = await alice.next(timeout=2)
            assert keepalive is not None
            assert (keepalive.event, keepalive.data, keepalive.id) == (
                "keepalive",
                "<3: Keep alive",
                "",
            )
            stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
        assert all(0.15 < gap < 0.6 for gap in gaps), gaps


async def test_the_default_keepalive_is_five_seconds(start_server: ServerFactory) -> None:
    from ssehub.settings import Settings

    assert Settings().keepalive == 5.0


async def test_the_long_task_sends_ten_progress_lines_then_answers(
    start_server: ServerFactory,
) -> None:
    server = start_server(env={"SSEHUB_DEMO_STEP": "0.2"})
    async with Stream(server.url, "bob") as bob, httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        task = asyncio.create_task(client.get(f"{server.url}/sse/task/bob"))
        progress = await bob.messages(11, timeout=10)
        assert progress[0].data == "User 'bob' connected"
        arrivals = progress[1:]
        assert [m.data for m in arrivals] == [f"User 'bob', attempt {i} / 10" for i in range(1, 11)]
        assert all(m.id for m in arrivals)
        answer = await task
        elapsed = time.monotonic() - started
        assert 1.8 < elapsed < 5.0
        assert answer.status_code == 200
        body = answer.json()
        assert body["message"] == "Task completed"
        assert body["data"].startswith("User 'bob' completed the task at: ")
        assert body["data"].endswith(".")


async def test_the_object_countdown_takes_a_second_a_step_then_sends_the_object(
    start_server: ServerFactory,
) -> None:
    server = start_server(env={"SSEHUB_DEMO_STEP": "1.0"})
    async with Stream(server.url, "carol") as carol, httpx.AsyncClient(timeout=30) as client:
        await carol.next_message()
        task = asyncio.create_task(client.get(f"{server.url}/sse/task-with-obj/carol"))
        arrivals = []
        for _ in range(6):
            message = await carol.next_message(timeout=3)
            assert message is not None
            arrivals.append((time.monotonic(), message.data))
        texts = [text for _, text in arrivals]
        assert texts[:5] == [f"Object sent to user 'carol' in {n}..." for n in range(5, 0, -1)]
        assert json.loads(texts[5]) == {
            "Name": "Victor",
            "Age": 30,
            "Country": "Spain",
            "IsActive": True,
        }
        assert texts[5] == '{"Name":"Victor","Age":30,"Country":"Spain","IsActive":true}'
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        assert all(0.8 < gap < 1.4 for gap in gaps), gaps
        answer = await task
        assert answer.status_code == 200
        assert answer.json()["message"] == "Task completed"
        assert "User 'carol' completed the task at: " in answer.json()["data"]


async def test_disconnect_closes_every_stream_of_the_user_at_once(
    start_server: ServerFactory,
) -> None:
    server = start_server(keepalive=30)
    async with (
        Stream(server.url, "dave") as first,
        Stream(server.url, "dave") as second,
        Stream(server.url, "erin") as other,
        httpx.AsyncClient() as client,
    ):
        await first.next_message()
        await second.next_message()
        status = (await client.get(f"{server.url}/sse/users/dave")).json()
        assert status["status"] == "connected"
        assert status["connections"] == 2
        started = time.monotonic()
        answer = await client.get(f"{server.url}/sse/disconnect/dave")
        assert answer.status_code == 200
        for stream in (first, second):
            final = await stream.next_message(timeout=2)
            assert final is not None
            assert final.event == "disconnected"
            assert await stream.ended(timeout=2)
        assert time.monotonic() - started < 1.0
        status = (await client.get(f"{server.url}/sse/users/dave")).json()
        assert status["status"] == "disconnected"
        assert status["connections"] == 0
        await client.post(f"{server.url}/sse/users/erin/messages", json={"data": "still here"})
        message = await other.messages(2)
        assert message[1].data == "still here"


async def test_status_of_a_user_never_seen_is_unknown(start_server: ServerFactory) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{server.url}/sse/users/nobody")).json()
    assert body == {
        "user_id": "nobody",
        "status": "unknown",
        "connections": 0,
        "last_seen": None,
        "pending": 0,
    }


async def test_swagger_lists_every_route_with_a_summary(start_server: ServerFactory) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        schema = (await client.get(f"{server.url}/openapi.json")).json()
        docs = await client.get(f"{server.url}/docs")
    assert docs.status_code == 200
    paths = schema["paths"]
    for path in (
        "/sse/connect/{user_id}",
        "/sse/disconnect/{user_id}",
        "/sse/task/{user_id}",
        "/sse/task-with-obj/{user_id}",
        "/sse/users/{user_id}/messages",
        "/sse/messages",
        "/sse/broadcast",
        "/sse/users/{user_id}",
        "/sse/users",
    ):
        for operation in paths[path].values():
            assert operation["summary"], path
    assert "curl -N" in paths["/sse/connect/{user_id}"]["get"]["description"]
    assert "example" in str(paths["/sse/messages"]["post"]["requestBody"])
