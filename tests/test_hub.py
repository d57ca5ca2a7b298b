"""The hub in-process, with a memory store and sinks that record what they are given."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from ssehub import Hub, LimitExceeded, Limits, MemoryStore, Message, UserState
from ssehub._keepalive import TICK_SLICE
from ssehub.events import KEEPALIVE_FRAME
from ssehub.exceptions import StoreUnavailable
from ssehub.stores.base import ReadResult

pytestmark = pytest.mark.anyio


class RecordingSink:
    def __init__(self, accept: int = 10**9) -> None:
        self.frames: list[bytes] = []
        self.closed = False
        self.final: bytes | None = None
        self._accept = accept

    def write(self, data: bytes) -> bool:
        if len(self.frames) >= self._accept:
            return False
        self.frames.append(data)
        return True

    def close(self, final: bytes | None = None) -> None:
        self.closed = True
        self.final = final

    def datas(self) -> list[bytes]:
        return [f for f in self.frames if f.startswith(b"id: ")]


async def test_a_plain_script_can_send_and_read_status_without_any_server() -> None:
    hub = Hub(MemoryStore())
    async with hub.running():
        first = await hub.send("u1", "hello")
        ids = await hub.send_many([Message("u1", {"n": 1}), Message("u2", [1], "list")])
        status = await hub.status("u1")
    assert first < ids[0]  # increasing per user; u2 has ids of its own
    assert status.status is UserState.UNKNOWN
    assert status.pending == 2


async def test_live_messages_arriving_during_replay_are_sent_once_after_it() -> None:
    store = MemoryStore()
    hub = Hub(store)
    async with hub.running():
        old = [await hub.send("u", f"old{i}") for i in range(3)]
        sink = RecordingSink()
        original_read = store.read_after

        async def read_then_publish(*args: object, **kwargs: object) -> object:
            result = await original_read(*args, **kwargs)  # type: ignore[arg-type]
            await hub.send("u", "during")
            return result

        store.read_after = read_then_publish  # type: ignore[method-assign,assignment]
        connection = await hub.open("u", sink, last_event_id=old[0])
        store.read_after = original_read  # type: ignore[method-assign]
        await hub.send("u", "after")
        hub.release(connection)
    bodies = [f.split(b"\n")[1] for f in sink.datas()]
    assert bodies == [b"data: old1", b"data: old2", b"data: during", b"data: after"]


async def test_a_sink_that_refuses_a_frame_is_closed_and_counted() -> None:
    hub = Hub(MemoryStore())
    async with hub.running():
        sink = RecordingSink(accept=3)
        await hub.open("s", sink)
        await hub.send("s", "one")
        await hub.send("s", "two")
        assert sink.closed
        assert hub.stats.dropped_slow == 1


async def test_streams_per_user_are_limited() -> None:
    hub = Hub(MemoryStore(), limits=Limits(max_connections_per_user=2))
    async with hub.running():
        await hub.open("l", RecordingSink())
        await hub.open("l", RecordingSink())
        with pytest.raises(LimitExceeded):
            await hub.open("l", RecordingSink())
        await hub.open("other", RecordingSink())
        assert hub.open_streams == 3


async def test_closing_the_hub_ends_every_stream_with_a_retry_hint_spread_around_retry_ms() -> None:
    hub = Hub(MemoryStore(), retry_ms=2000)
    sinks = [RecordingSink() for _ in range(64)]
    async with hub.running():
        for index, sink in enumerate(sinks):
            await hub.open(f"c{index % 40}", sink)
    assert all(s.closed and s.final is not None for s in sinks)
    hints = [int(s.final.removeprefix(b"retry: ").removesuffix(b"\n\n")) for s in sinks if s.final]
    # Clients come back spread over a window as wide as the hint, not all at once.
    assert min(hints) == 1000
    assert max(hints) == 3000
    assert len(set(hints)) == 16
    assert abs(sum(hints) / len(hints) - 2000) < 1


async def test_one_timer_sends_keepalives_and_ends_expired_streams() -> None:
    hub = Hub(MemoryStore(), keepalive=0.05)
    async with hub.running():
        lasting, expiring = RecordingSink(), RecordingSink()
        await hub.open("k", lasting)
        await hub.open("e", expiring, expires_at=time.monotonic() + 0.01)
        await asyncio.sleep(0.3)
        assert lasting.frames.count(KEEPALIVE_FRAME) >= 3
        assert expiring.closed
        assert expiring.final is not None
        assert b"event: expired" in expiring.final
        assert not lasting.closed


async def test_a_keepalive_tick_reaches_every_stream_in_slices_letting_the_loop_run() -> None:
    # The tick writes a slice of streams per loop step, so requests are served between
    # slices instead of waiting for every stream of the node.
    turns = [0]
    loop = asyncio.get_running_loop()

    def count_turns() -> None:
        turns[0] += 1
        loop.call_soon(count_turns)

    class TurnSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.turns: list[int] = []

        def write(self, data: bytes) -> bool:
            if data is KEEPALIVE_FRAME:
                self.turns.append(turns[0])
            return super().write(data)

    hub = Hub(MemoryStore(), keepalive=0.05)
    streams = 3 * TICK_SLICE + 1
    sinks = [TurnSink() for _ in range(streams)]
    async with hub.running():
        connections = [await hub.open(f"s{i}", sink) for i, sink in enumerate(sinks)]
        hub.release(connections[-1])  # gone: no keep-alive written to it
        count_turns()
        await asyncio.sleep(0.12)
    ticked = [sink.turns[-1] for sink in sinks[:-1]]  # the greeting's keep-alive is turn 0
    assert all(turn > 0 for turn in ticked)
    assert len(set(ticked)) > 1  # not every stream in one loop step
    assert sinks[-1].turns == [0]


async def test_broadcast_reaches_every_connected_user_with_their_own_ids() -> None:
    hub = Hub(MemoryStore())
    async with hub.running():
        sinks = {u: RecordingSink() for u in ("a", "b", "c")}
        for user, sink in sinks.items():
            await hub.open(user, sink)
        await hub.broadcast({"all": True}, event="notice")
        async with asyncio.timeout(2):
            while not all(s.datas() for s in sinks.values()):
                await asyncio.sleep(0.01)
    for sink in sinks.values():
        (frame,) = sink.datas()
        assert frame.endswith(b'event: notice\ndata: {"all":true}\n\n')


class BusyStore(MemoryStore):
    """A memory store that is too busy for its first few appends."""

    def __init__(self, busy_appends: int) -> None:
        super().__init__()
        self.busy_appends = busy_appends

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        if self.busy_appends > 0:
            self.busy_appends -= 1
            raise StoreUnavailable("busy")
        return await super().append_to_all(user_ids, payload)


async def test_an_accepted_broadcast_waits_out_a_busy_store_and_keeps_its_order() -> None:
    hub = Hub(BusyStore(busy_appends=3))
    async with hub.running():
        sinks = [RecordingSink() for _ in range(3)]
        for index, sink in enumerate(sinks):
            await hub.open(f"b{index}", sink)
        for n in range(5):
            await hub.broadcast(n)
        async with asyncio.timeout(5):
            while not all(len(s.datas()) == 5 for s in sinks):
                await asyncio.sleep(0.01)
    for sink in sinks:
        assert [f.split(b"\n")[1] for f in sink.datas()] == [b"data: %d" % n for n in range(5)]


class SlowAppendStore(MemoryStore):
    """A memory store whose broadcast appends wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.appending = asyncio.Event()
        self.go_on = asyncio.Event()

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        self.appending.set()
        await self.go_on.wait()
        return await super().append_to_all(user_ids, payload)


async def test_closing_while_a_broadcast_is_appended_appends_each_broadcast_once() -> None:
    store = SlowAppendStore()
    hub = Hub(store)
    await hub.start()
    await hub.open("ann", RecordingSink())
    for n in range(3):
        await hub.broadcast(n)
    await store.appending.wait()  # the worker is in the middle of the first one
    closing = asyncio.create_task(hub.close())
    await asyncio.sleep(0.05)
    store.go_on.set()
    async with asyncio.timeout(5):
        await closing
    kept = await store.read_after("ann", None, limit=10)
    assert [event.payload for event in kept.events] == [b"data: %d\n" % n for n in range(3)]


class SlowWatchStore(MemoryStore):
    """A store whose subscription to a user is confirmed only when the test says so."""

    watch_at_once = False  # it waits in `watch`, as a store with subscriptions does

    def __init__(self) -> None:
        super().__init__()
        self.confirm = asyncio.Event()
        self.fail = False
        self.reads: list[str] = []

    async def watch(self, user_id: str) -> None:
        await self.confirm.wait()
        if self.fail:
            raise StoreUnavailable("no subscription")
        await super().watch(user_id)

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        self.reads.append(user_id)
        return await super().read_after(user_id, after_id, limit=limit)


async def test_a_second_stream_reads_history_only_once_the_users_subscription_is_confirmed() -> (
    None
):
    store = SlowWatchStore()
    hub = Hub(store)
    async with hub.running():
        first = asyncio.create_task(hub.open("u", RecordingSink()))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hub.open("u", RecordingSink(), last_event_id="0-0"))
        await asyncio.sleep(0.05)
        assert store.reads == []  # what it read now could miss what comes before the watch
        store.confirm.set()
        await asyncio.gather(first, second)
        assert store.reads == ["u", "u"]
        assert hub.open_streams == 2


async def test_when_the_first_streams_subscription_fails_the_waiting_stream_is_refused_too() -> (
    None
):
    store = SlowWatchStore()
    store.fail = True
    hub = Hub(store)
    async with hub.running():
        first = asyncio.create_task(hub.open("u", RecordingSink()))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(hub.open("u", RecordingSink(), last_event_id="0-0"))
        await asyncio.sleep(0.01)
        store.confirm.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in results)
        assert hub.open_streams == 0
        assert store.reads == []
