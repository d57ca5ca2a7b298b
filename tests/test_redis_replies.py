"""The subscriber reads every pub/sub reply a socket read brought in one call."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from ssehub.events import event_key
from ssehub.stores._redis_subscriber import replies_reader
from ssehub.stores.redis import RedisStore
from tests.redis_server import forget_prefix, redis_url, store_url
from tests.stores.conftest import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

# Payloads that a parser splitting on the wrong byte would cut or merge.
TRICKY = [
    b"",
    b" ",
    b"a b",
    b"\r\n",
    b"*2\r\n$1\r\nx\r\n",
    b"\x00\xff",
    "é\n".encode(),
    b"x" * 70_000,
]


async def subscribed(channel: str) -> Connection:
    client = aioredis.Redis.from_url(redis_url(), protocol=2)
    conn: Connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    await conn.connect()  # type: ignore[no-untyped-call]
    await conn.send_command("SUBSCRIBE", channel)
    assert (await conn.read_response())[0] == b"subscribe"
    return conn


async def test_a_burst_already_received_comes_back_from_one_call_in_order() -> None:
    channel = f"ssehub-test:replies:{uuid.uuid4().hex}"
    conn = await subscribed(channel)
    try:
        async with aioredis.Redis.from_url(redis_url()) as client:
            async with client.pipeline(transaction=False) as pipe:
                for payload in TRICKY:
                    pipe.publish(channel, payload)
                await pipe.execute()
            await asyncio.sleep(0.2)  # all of them are in the socket now
        read = replies_reader(conn)
        got: list[bytes] = []
        calls = 0
        while len(got) < len(TRICKY):
            replies = await asyncio.wait_for(read(), 2)
            calls += 1
            got += [reply[2] for reply in replies]
        assert got == TRICKY
        assert calls <= 3  # the large payload may take several socket reads, not one each
    finally:
        await conn.disconnect()


async def test_an_error_reply_is_raised_as_read_response_raises_it() -> None:
    conn = await subscribed(f"ssehub-test:replies:{uuid.uuid4().hex}")
    try:
        await conn.send_command("GET", "k")  # refused while subscribed
        with pytest.raises(ResponseError):
            await asyncio.wait_for(replies_reader(conn)(), 2)
    finally:
        await conn.disconnect()


async def test_events_of_many_users_published_at_once_arrive_whole_and_in_order() -> None:
    prefix = f"replies{uuid.uuid4().hex[:8]}"
    url = store_url(prefix)
    listener = RecordingListener()
    watcher = RedisStore.from_url(url)
    watcher.bind(listener)
    sender = RedisStore.from_url(url)
    sender.bind(RecordingListener())
    users = ["ünï", "a b", "x}y", "\U0001f600", "plain"]
    try:
        await watcher.start()
        await sender.start()
        for user in users:
            await watcher.watch(user)
        items = [(user, payload) for payload in TRICKY for user in users]
        stored = await sender.append_many(items)
        await listener.wait_until(lambda: len(listener.events) == len(items))
        for user in users:
            heard = [(e.id, e.payload) for u, e in listener.events if u == user]
            sent = [(e.id, p) for (u, p), e in zip(items, stored, strict=True) if u == user]
            assert heard == sent
            ids = [event_key(event_id) for event_id, _ in heard]
            assert ids == sorted(ids)
    finally:
        await watcher.close()
        await sender.close()
        forget_prefix(prefix)
