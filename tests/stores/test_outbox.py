"""The webhook outbox contract, for every store's outbox (memory, SQLite, Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from ssehub.stores import MemoryStore
from ssehub.stores._redis_outbox import RedisOutbox
from ssehub.stores.outbox import Delivery, HasOutbox, Outbox, outbox_of
from ssehub.stores.redis import RedisStore
from ssehub.stores.sqlite import SqliteStore
from tests.redis_server import forget_prefix, redis_url
from tests.stores.conftest import StoreFactory, reader_held

pytestmark = pytest.mark.anyio


def delivery(number: int = 1) -> Delivery:
    return Delivery(f"evt-{number}", b'{"n": %d}' % number, time.time())


async def outbox(make_store: StoreFactory) -> Outbox:
    store = await make_store()
    assert isinstance(store, HasOutbox)
    return outbox_of(store)


async def test_a_put_delivery_is_claimed_once_with_its_body(make_store: StoreFactory) -> None:
    box = await outbox(make_store)
    await box.put(delivery(1))
    await box.put(delivery(1))  # the same id again changes nothing
    assert await box.pending() == 1
    (claimed,) = await box.claim(10)
    assert (claimed.id, claimed.body, claimed.attempts) == ("evt-1", b'{"n": 1}', 0)
    assert await box.claim(10) == []  # held by the claim above
    assert await box.pending() == 1


async def test_claims_are_oldest_first_and_limited(make_store: StoreFactory) -> None:
    box = await outbox(make_store)
    for number in range(5):
        await box.put(delivery(number))
        await asyncio.sleep(0.002)  # distinct due times
    first = await box.claim(2)
    rest = await box.claim(10)
    assert [d.id for d in first] == ["evt-0", "evt-1"]
    assert [d.id for d in rest] == ["evt-2", "evt-3", "evt-4"]


async def test_a_retried_delivery_is_due_again_after_its_delay(make_store: StoreFactory) -> None:
    box = await outbox(make_store)
    await box.put(delivery())
    (claimed,) = await box.claim(1)
    await box.retry(dataclasses.replace(claimed, attempts=1), 0.3)
    assert await box.claim(1) == []
    await asyncio.sleep(0.35)
    (again,) = await box.claim(1)
    assert (again.id, again.body, again.attempts) == (claimed.id, claimed.body, 1)
    assert abs(again.created - claimed.created) < 0.01


async def test_a_removed_delivery_is_gone(make_store: StoreFactory) -> None:
    box = await outbox(make_store)
    await box.put(delivery())
    (claimed,) = await box.claim(1)
    await box.remove(claimed)
    assert await box.pending() == 0
    await box.retry(claimed, 0.0)  # a late give-back of a removed delivery changes nothing
    assert await box.claim(1) == []
    assert await box.pending() == 0


async def test_sqlite_deliveries_survive_a_restart_due_at_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = SqliteStore(path)
    await first.start()
    box = first.outbox()
    await box.put(delivery())
    (claimed,) = await box.claim(1)  # held when the process ends
    await first.close()

    second = SqliteStore(path)
    await second.start()
    try:
        (again,) = await second.outbox().claim(1)
        assert (again.id, again.body) == (claimed.id, claimed.body)
    finally:
        await second.close()


async def test_a_sqlite_claim_reading_an_old_snapshot_skips_what_was_sent_meanwhile(
    tmp_path: Path,
) -> None:
    # A claim's read may run in a snapshot older than a delivery's removal (reads taken
    # together share one), and answer after it: it must not hand that delivery out again.
    store = SqliteStore(tmp_path / "outbox.db", readers=1)
    await store.start()
    try:
        box = store.outbox()
        await box.put(delivery())
        (claimed,) = await box.claim(1)
        started, finish = threading.Event(), threading.Event()

        def snapshot(cur: sqlite3.Cursor) -> None:  # starts the next batch's snapshot
            cur.execute("SELECT count(*) FROM webhooks").fetchone()
            started.set()
            finish.wait(10)

        async with reader_held(store):  # the snapshot and the claim's read: one batch
            taking = asyncio.ensure_future(store._read(snapshot))
            claiming = asyncio.ensure_future(box.claim(10))
        await asyncio.to_thread(started.wait, 10)
        await box.remove(claimed)  # sent: committed while the snapshot still shows it
        finish.set()
        await taking
        assert await claiming == []
        assert await box.claim(10) == []
    finally:
        await store.close()


def test_a_store_without_an_outbox_of_its_own_gets_a_memory_one() -> None:
    class Bare:
        pass

    assert type(outbox_of(Bare())).__name__ == "MemoryOutbox"
    assert isinstance(MemoryStore(), HasOutbox)


@pytest.mark.redis
async def test_a_redis_delivery_is_claimed_by_one_node_and_by_another_once_the_lease_ends() -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    nodes = [RedisStore.from_url(f"{redis_url()}?prefix={prefix}") for _ in range(2)]
    try:
        first, second = (
            RedisOutbox(node._client, prefix=prefix, errors=(OSError,), lease=0.5) for node in nodes
        )
        await first.put(delivery())
        claims = await asyncio.gather(first.claim(5), second.claim(5))
        assert sorted(len(claim) for claim in claims) == [0, 1]  # one node has it
        (held,) = claims[0] or claims[1]

        await asyncio.sleep(0.6)  # the holder died: its lease runs out
        (taken,) = await second.claim(5)
        assert taken.id == held.id
        await first.remove(held)  # the dead node's late word changes nothing
        assert await second.pending() == 1
        await second.remove(taken)
        assert await first.pending() == 0
    finally:
        for node in nodes:
            await node.close()
        forget_prefix(prefix)
