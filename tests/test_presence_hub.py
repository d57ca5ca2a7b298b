"""Presence in-process: a hub on a memory store, its listeners and its iterator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from ssehub import Hub, MemoryStore
from ssehub.presence import (
    MESSAGE_UNDELIVERED,
    USER_OFFLINE,
    USER_ONLINE,
    PresenceEvent,
    UndeliveredMessage,
)
from tests.test_hub import RecordingSink

pytestmark = pytest.mark.anyio


async def next_event(events: asyncio.Queue[PresenceEvent], timeout: float = 3.0) -> PresenceEvent:
    async with asyncio.timeout(timeout):
        return await events.get()


async def test_online_then_offline_after_the_grace_and_a_reload_inside_it_is_silent() -> None:
    hub = Hub(MemoryStore(), offline_grace=0.3)
    got: asyncio.Queue[PresenceEvent] = asyncio.Queue()
    hub.presence.subscribe(got.put_nowait)
    async with hub.running():
        first = await hub.open("alice", RecordingSink())
        online = await next_event(got)
        assert (online.type, online.user_id) == (USER_ONLINE, "alice")
        hub.release(first)
        reload = await hub.open("alice", RecordingSink())  # inside the grace
        hub.release(reload)
        offline = await next_event(got)
        assert (offline.type, offline.user_id) == (USER_OFFLINE, "alice")
        await hub.open("alice", RecordingSink())
        assert (await next_event(got)).type == USER_ONLINE
    assert hub.presence.emitted[USER_ONLINE] == 2


async def test_the_iterator_yields_what_this_node_emits_and_a_stopping_hub_goes_offline() -> None:
    hub = Hub(MemoryStore(), offline_grace=60.0)
    seen: list[PresenceEvent] = []

    async def collect() -> None:
        async for event in hub.presence.events():
            seen.append(event)

    async with hub.running():
        task = asyncio.create_task(collect())
        await asyncio.sleep(0)
        await hub.open("bob", RecordingSink())
        async with asyncio.timeout(3):
            while not seen:
                await asyncio.sleep(0.01)
    # The grace is long; stopping the hub still ends the user's presence.
    async with asyncio.timeout(3):
        while len(seen) < 2:
            await asyncio.sleep(0.01)
    task.cancel()
    assert [(e.type, e.user_id) for e in seen] == [(USER_ONLINE, "bob"), (USER_OFFLINE, "bob")]


async def test_a_message_no_stream_got_in_time_is_undelivered_with_its_data() -> None:
    hub = Hub(MemoryStore(), offline_grace=60.0, undelivered_after=0.2)
    got: asyncio.Queue[PresenceEvent] = asyncio.Queue()
    hub.presence.subscribe(got.put_nowait)
    async with hub.running():
        await hub.open("alice", RecordingSink())
        await hub.send("alice", "seen live")
        assert hub.presence.awaiting == 1
        sent = time.time()
        lost = await hub.send("carol", {"n": 1}, event="report")
        await hub.send("dave", "42")
        await hub.open("dave", RecordingSink())  # replayed in time: delivered
        last = await hub.send("erin", "42")  # checked after all the others
        undelivered: list[PresenceEvent] = []
        while len(undelivered) < 2:
            event = await next_event(got)
            if event.type == MESSAGE_UNDELIVERED:
                undelivered.append(event)
        assert hub.presence.awaiting == 0  # every message was checked
    assert 0.2 <= undelivered[0].at - sent < 0.3  # at: when its deadline passed
    assert [(e.user_id, e.message) for e in undelivered] == [
        ("carol", UndeliveredMessage(lost, "report", {"n": 1})),
        ("erin", UndeliveredMessage(last, None, "42")),
    ]


class SlowRefreshStore(MemoryStore):
    """A memory store whose presence refresh (every keep-alive) waits for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshing = asyncio.Event()
        self.go_on = asyncio.Event()

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        self.refreshing.set()
        await self.go_on.wait()
        await super().refresh_presence(user_ids)


async def test_a_stream_closed_while_the_keepalive_refreshes_presence_still_goes_offline() -> None:
    store = SlowRefreshStore()
    hub = Hub(store, keepalive=0.05, offline_grace=0.1)
    got: asyncio.Queue[PresenceEvent] = asyncio.Queue()
    hub.presence.subscribe(got.put_nowait)
    async with hub.running():
        stream = await hub.open("alice", RecordingSink())
        assert (await next_event(got)).type == USER_ONLINE
        async with asyncio.timeout(3):
            await store.refreshing.wait()  # the tick listed alice, and waits
        hub.release(stream)
        store.go_on.set()  # the tick's heartbeat must not bring alice back
        offline = await next_event(got)
        assert (offline.type, offline.user_id) == (USER_OFFLINE, "alice")
