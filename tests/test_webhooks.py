"""Webhook delivery against a real receiver process: signed, retried, kept until received."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from ssehub.presence import USER_ONLINE, PresenceEvent
from ssehub.stores import Store
from ssehub.stores.outbox import outbox_of
from ssehub.stores.sqlite import SqliteStore
from ssehub.webhooks import WebhookSender, retry_delay, sign
from tests.conftest import REPO, free_port
from tests.stores.conftest import STORE_KINDS, StoreFactory
from tests.webhook_receiver import Receiver, ReceiverFactory, receivers, signature_is_valid

pytestmark = pytest.mark.anyio

SECRET = "whsec-test"


def online(event_id: str) -> PresenceEvent:
    """A ``user.online`` event of alice with this id."""
    return PresenceEvent(event_id, USER_ONLINE, "alice", time.time())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverFactory]:
    with receivers(tmp_path, SECRET) as make:
        yield make


@pytest.fixture(params=STORE_KINDS)
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = StoreFactory(request.param, tmp_path)
    yield await factory()
    await factory.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "hub.db")
    await store.start()
    yield store
    await store.close()


async def wait_until(done: Callable[[], bool], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not done():
            await anyio.sleep(0.02)


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    header = sign("key", b'{"a":1}', 1700000000)
    # echo -n '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
    assert header == (
        "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
    )
    assert signature_is_valid("key", header, b'{"a":1}')
    assert not signature_is_valid("other", header, b'{"a":1}')
    assert not signature_is_valid("key", header, b'{"a":2}')


def test_retries_wait_one_second_then_twice_as_long_up_to_five_minutes() -> None:
    delays = [retry_delay(attempt) for attempt in range(1, 13)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == delays[-1] == 300.0
    assert retry_delay(10_000) == 300.0


async def test_an_event_is_posted_signed_with_its_id(
    any_store: Store, receiver: ReceiverFactory
) -> None:
    hook = receiver()
    async with WebhookSender(outbox_of(any_store), url=hook.url, secret=SECRET).running() as sender:
        event = online("evt-1")
        sender(event)
        (request,) = await hook.wait_for(1)
        await wait_until(lambda: sender.stats.delivered == 1)
    assert request["id"] == "evt-1"
    assert request["content_type"] == "application/json"
    assert json.loads(request["body"]) == event.body()
    assert request["valid"], request["signature"]
    timestamp = int(request["signature"].split(",")[0].removeprefix("t="))
    assert abs(timestamp - request["at"]) < 2
    assert await sender.outbox.pending() == 0
    assert sender.stats.latency.count == 1


async def test_a_failing_receiver_gets_the_same_id_again_with_back_off(
    sqlite_store: Store, receiver: ReceiverFactory
) -> None:
    hook = receiver("--fail-first", "2")
    async with WebhookSender(
        outbox_of(sqlite_store), url=hook.url, secret=SECRET
    ).running() as sender:
        sender(online("evt-retry"))
        requests = await hook.wait_for(3, timeout=10)
        await wait_until(lambda: sender.stats.delivered == 1)
    assert [r["id"] for r in requests] == ["evt-retry"] * 3
    assert [r["status"] for r in requests] == [500, 500, 200]
    assert all(r["valid"] for r in requests)
    assert len({r["body"] for r in requests}) == 1
    first_gap, second_gap = (b["at"] - a["at"] for a, b in itertools.pairwise(requests))
    # The first retry after 1 s (within 2 s), then twice as long; room for a busy machine.
    assert 0.8 <= first_gap <= 2.5
    assert 1.8 <= second_gap <= 4.5
    assert sender.stats.failures["status"] == 2


async def test_a_receiver_that_is_down_gets_the_event_when_it_comes_up(
    sqlite_store: Store, receiver: ReceiverFactory
) -> None:
    hook = receiver(start=False)
    async with WebhookSender(
        outbox_of(sqlite_store), url=hook.url, secret=SECRET
    ).running() as sender:
        sender(online("evt-down"))
        await wait_until(lambda: sender.stats.failures["network"] >= 2)
        hook.start()
        (request,) = await hook.wait_for(1, timeout=10)
        await wait_until(lambda: sender.stats.delivered == 1)
    assert (request["id"], request["valid"]) == ("evt-down", True)


async def test_a_receiver_slower_than_five_seconds_is_sent_the_event_again(
    sqlite_store: Store, receiver: ReceiverFactory
) -> None:
    hook = receiver("--slow-first", "1", "--delay", "6")
    async with WebhookSender(
        outbox_of(sqlite_store), url=hook.url, secret=SECRET
    ).running() as sender:
        started = time.monotonic()
        sender(online("evt-slow"))
        await wait_until(lambda: sender.stats.delivered == 1, timeout=15)
        elapsed = time.monotonic() - started
    assert sender.stats.failures["timeout"] == 1
    assert 5.0 <= elapsed < 11.0  # gave up on the first attempt after 5 s
    assert [r["id"] for r in hook.received()] == ["evt-slow", "evt-slow"]


async def test_a_delivery_failing_past_the_give_up_time_is_dropped(
    sqlite_store: Store, receiver: ReceiverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hook = receiver("--fail-first", "1000")
    sender = WebhookSender(
        outbox_of(sqlite_store), url=hook.url, secret=SECRET, first_retry=0.1, give_up_after=0.5
    )
    async with sender.running():
        sender(online("evt-doomed"))
        await wait_until(lambda: sender.stats.dropped == 1)
        assert await sender.outbox.pending() == 0
    assert len(hook.received()) >= 3
    assert "webhook evt-doomed dropped after" in caplog.text


async def test_attempts_in_flight_are_bounded(
    sqlite_store: Store, receiver: ReceiverFactory
) -> None:
    hook = receiver("--slow-first", "6", "--delay", "0.5")
    sender = WebhookSender(outbox_of(sqlite_store), url=hook.url, secret=SECRET, concurrency=2)
    async with sender.running():
        for number in range(6):
            sender(online(f"evt-{number}"))
        await wait_until(lambda: sender.stats.delivered == 6)
    received = hook.received()
    assert sorted(r["id"] for r in received) == [f"evt-{n}" for n in range(6)]
    assert max(r["inflight"] for r in received) == 2


async def test_pending_sqlite_deliveries_are_sent_after_a_restart(
    tmp_path: Path, receiver: ReceiverFactory
) -> None:
    hook = receiver(start=False)
    path = tmp_path / "restart.db"
    store = SqliteStore(path)
    await store.start()
    async with WebhookSender(outbox_of(store), url=hook.url, secret=SECRET).running() as sender:
        sender(online("evt-kept"))
        await wait_until(lambda: sender.stats.failures["network"] >= 1)
    await store.close()

    hook.start()
    store = SqliteStore(path)
    await store.start()
    try:
        async with WebhookSender(outbox_of(store), url=hook.url, secret=SECRET).running() as again:
            await wait_until(lambda: again.stats.delivered == 1)
    finally:
        await store.close()
    assert [r["id"] for r in hook.received()] == ["evt-kept"]


def readme_receiver() -> str:
    section = (REPO / "README.md").read_text().split("## Webhooks", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README lost its webhook receiver"
    return match.group(1)


def start_readme_receiver(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """The README's receiver as a process; its output goes to ``out`` and ``err``."""
    script = directory / "receiver.py"
    script.write_text(readme_receiver())
    env = {"PATH": os.environ.get("PATH", ""), "SSEHUB_WEBHOOK_SECRET": SECRET, "PORT": str(port)}
    with (directory / "out").open("wb") as out, (directory / "err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(script)],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip


async def test_the_readme_receiver_takes_signed_events_once_and_refuses_forgeries(
    tmp_path: Path, sqlite_store: Store
) -> None:
    port = free_port()
    hook = Receiver(tmp_path, port, SECRET)  # for its URL and its wait for the port
    proc = start_readme_receiver(tmp_path, port)
    try:
        await hook.wait_for_port()
        sender = WebhookSender(outbox_of(sqlite_store), url=hook.url, secret=SECRET)
        async with sender.running():
            event = online("evt-readme")
            sender(event)
            await wait_until(lambda: sender.stats.delivered == 1)
        body = orjson.dumps(event.body())
        now = int(time.time())
        async with httpx.AsyncClient() as client:

            async def post(signature: str | None) -> int:
                headers = {"Ssehub-Signature": signature} if signature else {}
                answer = await client.post(hook.url, content=body, headers=headers)
                return answer.status_code

            assert await post(sign(SECRET, body, now)) == 204  # again: handled once
            assert await post(sign("not-the-secret", body, now)) == 401
            assert await post(sign(SECRET, body, now - 600)) == 401  # a replay
            assert await post(sign(SECRET, body, now).replace("t=", "t=x")) == 401
            assert await post(None) == 401
    finally:
        proc.kill()
        proc.wait(10)
    assert (tmp_path / "out").read_text().splitlines() == ["user.online alice"]
    assert "Traceback" not in (tmp_path / "err").read_text()
