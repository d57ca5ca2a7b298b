"""Ids, replay on reconnect, the offline queue and the reset notice."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.api.test_streams import publish
from tests.conftest import ServerFactory
from tests.sse import Stream

pytestmark = pytest.mark.anyio


async def test_reconnecting_with_last_event_id_replays_exactly_what_was_missed(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        async with Stream(server.url, "ivy") as first:
            await first.next_message()
            ids = [await publish(client, server.url, "ivy", f"a{i}") for i in range(3)]
            got = await first.messages(3)
            assert [m.id for m in got] == ids
        missed = [await publish(client, server.url, "ivy", f"b{i}") for i in range(4)]
        for how in ("header", "query"):
            headers = {"Last-Event-ID": ids[-1]} if how == "header" else {}
            params = {"last_event_id": ids[-1]} if how == "query" else {}
            async with Stream(server.url, "ivy", headers=headers, params=params) as again:
                greeting = await again.next_message()
                assert greeting is not None
                assert greeting.data == "User 'ivy' connected"
                replayed = await again.messages(4)
                assert [m.id for m in replayed] == missed
                assert [m.data for m in replayed] == [f"b{i}" for i in range(4)]


async def test_ids_increase_per_user(start_server: ServerFactory) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        ids = [await publish(client, server.url, "jo", i) for i in range(50)]
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert keys == sorted(keys)
    assert len(set(keys)) == 50


async def test_messages_published_during_replay_arrive_once_without_a_gap(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        first = await publish(client, server.url, "kim", "seed")
        for i in range(300):
            await publish(client, server.url, "kim", f"old{i}")

        async def keep_publishing() -> list[str]:
            return [await publish(client, server.url, "kim", f"new{i}") for i in range(100)]

        publisher = asyncio.create_task(keep_publishing())
        async with Stream(server.url, "kim", headers={"Last-Event-ID": first}) as stream:
            new_ids = await publisher
            got = await stream.messages(401, timeout=15)
    datas = [m.data for m in got[1:]]
    assert datas == [f"old{i}" for i in range(300)] + [f"new{i}" for i in range(100)]
    assert [m.id for m in got][-100:] == new_ids


async def test_messages_for_a_user_without_a_stream_wait_for_the_next_connect(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        async with Stream(server.url, "lee") as stream:
            await stream.next_message()
            await publish(client, server.url, "lee", "seen")
            await stream.messages(1)
        async with asyncio.timeout(3):
            while (await client.get(f"{server.url}/sse/users/lee")).json()["connections"]:
                await asyncio.sleep(0.02)
        answer = await client.post(
            f"{server.url}/sse/users/lee/messages", json={"data": "while away"}
        )
        assert answer.json()["status"] == "disconnected"
        await publish(client, server.url, "lee", {"also": "this"})
        status = (await client.get(f"{server.url}/sse/users/lee")).json()
        assert status["pending"] == 2
        async with Stream(server.url, "lee") as again:
            got = await again.messages(3)
            assert [m.data for m in got[1:]] == ["while away", '{"also":"this"}']
        async with Stream(server.url, "lee") as third:
            await third.next_message()
            await publish(client, server.url, "lee", "fresh")
            assert (await third.messages(1))[0].data == "fresh"


async def test_messages_sent_before_a_users_first_connect_are_delivered(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{server.url}/sse/users/new/messages", json={"data": "hi"})
        assert answer.json()["status"] == "unknown"
        async with Stream(server.url, "new") as stream:
            got = await stream.messages(2)
    assert got[1].data == "hi"


async def test_asking_for_history_no_longer_kept_sends_a_reset_then_what_is_kept(
    start_server: ServerFactory,
) -> None:
    server = start_server(env={"SSEHUB_HISTORY_MAX_EVENTS": "5"})
    async with httpx.AsyncClient() as client:
        ids = [await publish(client, server.url, "max", f"m{i}") for i in range(12)]
        async with Stream(server.url, "max", headers={"Last-Event-ID": ids[2]}) as stream:
            got = await stream.messages(7)
    assert got[0].data == "User 'max' connected"
    assert got[1].event == "reset"
    assert json.loads(got[1].data) == {"reason": "history_trimmed", "last_event_id": ids[2]}
    assert [m.id for m in got[2:]] == ids[-5:]


async def test_an_id_from_the_future_also_resets(start_server: ServerFactory) -> None:
    server = start_server()
    async with httpx.AsyncClient() as client:
        await publish(client, server.url, "ned", "kept")
        async with Stream(server.url, "ned", headers={"Last-Event-ID": "99999999999999-0"}) as s:
            got = await s.messages(3)
    assert got[1].event == "reset"
    assert got[2].data == "kept"
