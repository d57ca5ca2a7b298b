"""The presence ledger, proved the same way on every store (one node here; several
nodes on Redis in tests/test_presence_redis.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from ssehub.stores import Store
from ssehub.stores._presence import (
    EMIT_CHUNK,
    PRESENCE_LOG,
    USER_OFFLINE,
    USER_ONLINE,
    LocalLedger,
    PresenceLedger,
    ledger_for,
    rfc3339,
)

pytestmark = pytest.mark.anyio

GRACE = 0.3


def now() -> tuple[float, str]:
    at = time.time()
    return at, rfc3339(at)


async def offline_after_grace(ledger: PresenceLedger, closed_at: float) -> list[str]:
    """Poll `due` until something is due; check nothing came before the grace ended."""
    async with asyncio.timeout(5):
        while True:
            went = await ledger.due(GRACE)
            if went:
                assert time.time() >= closed_at + GRACE - 0.05  # not before the grace
                return [f"{e.type} {e.user_id}" for e in went]
            await asyncio.sleep(0.02)


async def test_online_once_offline_after_the_grace_and_each_in_the_log(store: Store) -> None:
    ledger = ledger_for(store)
    at, text = now()
    (online,) = await ledger.opened([("ann", at, text)])
    assert (online.type, online.user_id) == (USER_ONLINE, "ann")
    assert online.at == pytest.approx(at, abs=0.001)
    assert await ledger.opened([("ann", *now())]) == []  # already online: nothing
    closed_at, closed_text = now()
    await ledger.closed([("ann", closed_at, closed_text)], GRACE)
    assert await ledger.due(GRACE) == []
    assert await offline_after_grace(ledger, closed_at) == [f"{USER_OFFLINE} ann"]
    logged = (await store.read_after(PRESENCE_LOG, None, limit=10)).events
    bodies = [json.loads(event.payload) for event in logged]
    assert [(b["type"], b["user_id"]) for b in bodies] == [
        (USER_ONLINE, "ann"),
        (USER_OFFLINE, "ann"),
    ]
    assert bodies[1]["at"] == closed_text  # when the last stream closed
    assert [event.id for event in logged] == [online.id, logged[1].id]


async def test_a_reopen_inside_the_grace_keeps_the_user_online(store: Store) -> None:
    ledger = ledger_for(store)
    await ledger.opened([("bo", *now())])
    await ledger.closed([("bo", *now())], GRACE)
    assert await ledger.opened([("bo", *now())]) == []  # a reload
    await asyncio.sleep(GRACE + 0.1)  # past the first close's grace
    assert await ledger.due(GRACE) == []
    closed_at, text = now()
    await ledger.closed([("bo", closed_at, text)], GRACE)
    assert await offline_after_grace(ledger, closed_at) == [f"{USER_OFFLINE} bo"]


async def test_a_new_stream_starts_after_the_cursor_and_deliveries_are_remembered(
    store: Store,
) -> None:
    ledger = ledger_for(store)
    first = await store.append("cy", b"data: 1\n")
    second = await store.append("cy", b"data: 2\n")
    assert await ledger.start_after("cy") is None
    await store.set_presence("cy", connections=0, cursor=first.id)
    assert await ledger.start_after("cy") == first.id
    assert await ledger.delivered(["cy", "dee"]) == [None, None]
    await ledger.record_delivered({"cy": second.id}, keep=60.0)
    await ledger.record_delivered({"cy": first.id}, keep=60.0)  # only moves forward
    assert await ledger.delivered(["cy", "dee"]) == [second.id, None]


async def test_streams_of_many_users_opening_at_once_each_start_after_their_own_cursor(
    store: Store,
) -> None:
    # Odd ids: a store that derives a user from a key or splits joined values by a
    # separator would mix them up.
    users = ["plain", "ünïcødé", "a b", "x}y", "{z}", "c:olon", "\U0001f600", "p:s:{q}"]
    ledger = ledger_for(store)
    cursors: dict[str, str | None] = {}
    for number, user in enumerate(users):
        events = [await store.append(user, b"data: %d\n" % n) for n in range(number % 3 + 1)]
        cursors[user] = events[0].id if number % 2 else None
    await store.set_presence_many([(user, 0, cursor) for user, cursor in cursors.items()])
    asked = [*users, users[1]]  # one user twice
    starts = await asyncio.gather(*(ledger.start_after(user) for user in asked))
    assert starts == [cursors[user] for user in asked]


async def test_a_burst_of_transitions_lets_the_event_loop_run_between_chunks(
    store: Store,
) -> None:
    # 10,000 users going offline together must not hold the loop (and every stream's
    # deliveries) for the whole burst: the ledger appends them in chunks.
    ledger = ledger_for(store)
    if not isinstance(ledger, LocalLedger):
        pytest.skip("a shared ledger waits on its server for each call, and emits 500 a call")
    users = 3 * EMIT_CHUNK + 1
    at, text = now()
    await ledger.opened([(f"b{i}", at, text) for i in range(users)])
    await ledger.closed([(f"b{i}", at, text) for i in range(users)], 0.0)
    ran_during: list[bool] = []
    asyncio.get_running_loop().call_soon(ran_during.append, True)
    went = await ledger.due(0.0)
    assert len(went) == users
    assert [e.user_id for e in went] == [f"b{i}" for i in range(users)]
    assert ran_during == [True]  # the callback ran before `due` returned
