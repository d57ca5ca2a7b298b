"""How the SQLite store's threads share their work: reads a batch at a time in one
transaction, and presence changes that wait a moment to share a commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from ssehub.exceptions import StoreUnavailable
from ssehub.stores import ReadResult, _sqlite_readers, _sqlite_writer
from ssehub.stores._sqlite_folds import SLICE_USERS
from ssehub.stores._sqlite_tail import UPTO
from tests.stores.conftest import Opener, reader_held, trace, transactions

pytestmark = pytest.mark.anyio


async def test_reads_taken_together_share_one_transaction_and_a_failure_fails_only_itself(
    open_sqlite: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace(monkeypatch, _sqlite_readers.Readers)
    store = await open_sqlite(readers=1)
    events = {user: await store.append(user, f"data: {user}\n".encode()) for user in "abc"}

    def broken(cur: sqlite3.Cursor) -> None:
        cur.execute("SELECT * FROM no_such_table")

    def faulty(cur: sqlite3.Cursor) -> None:
        raise ValueError("a fault of the read's own")

    async with reader_held(store):
        statements.clear()
        reads = [
            asyncio.ensure_future(store.read_after("a", None, limit=10)),
            asyncio.ensure_future(store.read_after("b", None, limit=10)),
            asyncio.ensure_future(store._read(broken)),
            asyncio.ensure_future(store._read(faulty)),
            asyncio.ensure_future(store.read_after("c", None, limit=10)),
        ]
    async with asyncio.timeout(10):  # a reader that died on the fault never answers
        done = await asyncio.gather(*reads, return_exceptions=True)
    answered = [done[0], done[1], done[4]]
    assert [r.events for r in answered if isinstance(r, ReadResult)] == [[events[u]] for u in "abc"]
    assert isinstance(done[2], StoreUnavailable)
    assert "SQLite read failed" in str(done[2])
    assert isinstance(done[3], ValueError)
    # One transaction until the failure, a new one after it; the fold mark read once in each.
    taken = transactions(statements)
    assert len(taken) == 2
    assert [sum(s == UPTO for s in t) for t in taken] == [1, 1]
    assert (await store.read_after("a", None, limit=10)).events == [events["a"]]


async def test_reads_that_come_together_gather_and_reads_one_at_a_time_do_not_wait(
    open_sqlite: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace(monkeypatch, _sqlite_readers.Readers)
    monkeypatch.setattr(_sqlite_readers, "GATHER_SECONDS", 1.0)  # long, to tell them apart
    monkeypatch.setattr(_sqlite_readers, "COMPANY_SECONDS", 0.5)
    store = await open_sqlite(readers=1)
    event = await store.append("alice", b"data: hi\n")

    def read() -> asyncio.Future[ReadResult]:
        return asyncio.ensure_future(store.read_after("alice", None, limit=10))

    async def timed(reading: asyncio.Future[ReadResult]) -> float:
        started = time.monotonic()
        assert (await reading).events == [event]
        return time.monotonic() - started

    for _ in range(4):  # alone, then one at a time, each after the one before: no wait
        assert await timed(read()) < 0.5

    async with reader_held(store):
        first = read()  # submitted while another read is out: reads come together
    started = time.monotonic()  # the reader is free, and waits a moment before it
    statements.clear()
    await asyncio.sleep(0.2)
    second = read()
    await asyncio.gather(first, second)
    assert time.monotonic() - started > 0.5
    assert len(transactions(statements)) == 1  # the one submitted meanwhile joined it

    await asyncio.sleep(0.6)
    assert await timed(read()) < 0.5  # long after the last: alone, no wait
    # Right after another, while reads were coming together: it waits for company...
    assert await timed(read()) > 0.5
    for _ in range(3):  # ...finds none, and reads one at a time no longer wait
        assert await timed(read()) < 0.5


async def test_presence_changes_wait_a_moment_to_share_a_commit_and_appends_do_not(
    open_sqlite: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace(monkeypatch, _sqlite_writer.Writer)
    monkeypatch.setattr(_sqlite_writer, "LAZY_SECONDS", 1.0)  # long, to tell them apart
    store = await open_sqlite()
    statements.clear()

    await store.set_presence("alice", connections=1)
    await asyncio.sleep(0.1)
    await store.set_presence("bob", connections=1)
    await store._presence.settle()
    upserts = [[s for s in t if "INTO users" in s] for t in transactions(statements)]
    assert [len(found) for found in upserts if found] == [2]  # one commit for both

    statements.clear()
    await store.set_presence("carol", connections=1)
    started = time.monotonic()
    event = await store.append("dave", b"data: now\n")
    assert time.monotonic() - started < 0.5  # an append does not wait for company
    (taken,) = [t for t in transactions(statements) if any("INTO users" in s for s in t)]
    assert any(s.startswith("INSERT INTO events") for s in taken)  # carol's came along
    assert (await store.read_after("dave", None, limit=10)).events == [event]
    assert (await store.get_user("carol")).connections == 1


async def test_appends_waiting_go_before_the_next_slice_of_a_fold(
    open_sqlite: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements = trace(monkeypatch, _sqlite_writer.Writer)
    store = await open_sqlite(index_interval=0.05)
    writer = store._writer
    users = [f"user-{n:03}" for n in range(3 * SLICE_USERS)]  # a fold of several slices
    release = threading.Event()

    def held(cur: sqlite3.Cursor) -> _sqlite_writer.Appended:
        release.wait(10)  # the writer's thread, inside the transaction
        return writer._insert(cur, [(user, b"data: first\n") for user in users])

    statements.clear()
    first = writer.submit(held, size=len(users), notify=True)
    await asyncio.sleep(0.1)  # past the fold's interval: its first slice is due after this
    waiting = asyncio.ensure_future(store.append("late", b"data: late\n"))
    await asyncio.sleep(0.05)  # submitted while the writer is held
    release.set()
    await asyncio.gather(first, waiting)

    def kind(transaction: list[str]) -> str:
        if any("INTO user_events" in s for s in transaction):
            return "slice"
        return "append" if any(s.startswith("INSERT INTO events") for s in transaction) else ""

    def taken() -> list[str]:
        return [kind(t) for t in transactions(statements) if kind(t)]

    async with asyncio.timeout(10):
        while taken().count("slice") < 4:  # 25 users: slices of 8, 8, 8 and 1
            await asyncio.sleep(0.05)
    # The late append went before the fold's first slice, due since the one before it.
    assert taken() == ["append", "append", "slice", "slice", "slice", "slice"]
    assert (await store.read_after("late", None, limit=10)).events == [waiting.result()]
