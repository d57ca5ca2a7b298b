"""Webhooks of real ``ssehub serve`` processes, sent to a real receiver process."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.sse import Stream
from tests.test_metrics import scrape
from tests.test_multinode import greeted, unique_prefix
from tests.test_presence import PresenceStream
from tests.webhook_receiver import Receiver, ReceiverFactory, receivers

pytestmark = pytest.mark.anyio

SECRET = "whsec-server"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverFactory]:
    with receivers(tmp_path, SECRET) as make:
        yield make


def sending_to(hook: Receiver) -> tuple[str, ...]:
    return ("--webhook-url", hook.url, "--webhook-secret", SECRET)


def by_id(received: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {request["id"]: json.loads(request["body"]) for request in received}


async def metric_reaches(
    server: ServerProcess, name: str, value: float, *, down: bool = False
) -> None:
    """Wait until a metric of ``server`` is at least ``value`` (at most, if ``down``)."""
    with anyio.fail_after(15):
        while (scrape(server.url)[name] - value) * (-1 if down else 1) < 0:
            await anyio.sleep(0.05)


def test_a_hub_with_a_webhook_url_reports_its_webhook_metrics(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        "--webhook-url", "http://127.0.0.1:9/hook", "--webhook-secret", "k", store="memory://"
    )
    samples = scrape(server.url)
    assert samples["ssehub_webhook_pending"] == 0
    assert samples["ssehub_webhook_deliveries_total{result=delivered}"] == 0
    assert samples["ssehub_webhook_failures_total{reason=timeout}"] == 0
    assert samples["ssehub_webhook_delivery_seconds_count"] == 0


def test_a_hub_without_a_webhook_url_has_no_webhook_metrics(start_server: ServerFactory) -> None:
    assert not any("webhook" in name for name in scrape(start_server().url))


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_online_offline_and_undelivered_reach_the_receiver_signed(
    start_server: ServerFactory, receiver: ReceiverFactory, tmp_path: Path, store: str
) -> None:
    hook = receiver()
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path}/hub.db"
    options = ("--offline-grace", "0.5", "--undelivered-after", "0.5")
    server = start_server(*sending_to(hook), *options, store=url)
    async with PresenceStream(server.url) as feed, httpx.AsyncClient() as client:
        async with Stream(server.url, "alice") as tab:
            await greeted(tab)
            online, _ = await feed.presence()
        offline, _ = await feed.presence()
        message = {"data": {"n": 1}, "event": "report"}
        sent = await client.post(f"{server.url}/sse/users/bob/messages", json=message)
        assert sent.status_code == 202, sent.text
        undelivered, _ = await feed.presence()
    received = await hook.wait_for(3)
    assert all(request["valid"] for request in received)
    assert {request["content_type"] for request in received} == {"application/json"}
    bodies = by_id(received)
    assert len(received) == len(bodies) == 3
    assert (bodies[online]["type"], bodies[online]["user_id"]) == ("user.online", "alice")
    assert (bodies[offline]["type"], bodies[offline]["user_id"]) == ("user.offline", "alice")
    assert bodies[undelivered]["type"] == "message.undelivered"
    assert bodies[undelivered]["message"] == {"id": sent.json()["id"], **message}
    await metric_reaches(server, "ssehub_webhook_deliveries_total{result=delivered}", 3)


async def test_a_killed_sqlite_hub_sends_its_pending_delivery_once_after_a_restart(
    start_server: ServerFactory, receiver: ReceiverFactory, tmp_path: Path
) -> None:
    hook = receiver(start=False)
    server = start_server(*sending_to(hook), store=f"sqlite:///{tmp_path}/hub.db")
    async with PresenceStream(server.url) as feed, Stream(server.url, "alice") as tab:
        await greeted(tab)
        online, _ = await feed.presence()
        # The receiver is down: the delivery failed once and waits in the outbox.
        await metric_reaches(server, "ssehub_webhook_failures_total{reason=network}", 1)
        server.signal(signal.SIGKILL)
        server.wait()

    server.start()  # the same file; the receiver is still down
    await metric_reaches(server, "ssehub_webhook_failures_total{reason=network}", 1)
    hook.start()
    await metric_reaches(server, "ssehub_webhook_deliveries_total{result=delivered}", 1)
    await metric_reaches(server, "ssehub_webhook_pending", 0, down=True)
    onlines = [request for request in hook.received() if request["id"] == online]
    assert len(onlines) == 1
    assert json.loads(onlines[0]["body"])["type"] == "user.online"
    assert onlines[0]["valid"]


@pytest.mark.redis
async def test_two_redis_nodes_send_each_event_of_a_user_on_both_exactly_once(
    start_server: ServerFactory, receiver: ReceiverFactory
) -> None:
    hook = receiver()
    with unique_prefix() as url:
        nodes = [start_server(*sending_to(hook), "--offline-grace", "1", store=url) for _ in "ab"]
        async with Stream(nodes[0].url, "alice") as on_a:
            await greeted(on_a)
            async with Stream(nodes[1].url, "alice") as on_b:
                await greeted(on_b)
        received = await hook.wait_for(2, timeout=15)
        for node in nodes:  # both nodes are done with both events: nothing more comes
            await metric_reaches(node, "ssehub_webhook_pending", 0)
        with anyio.fail_after(15):
            while (
                sum(
                    scrape(node.url)["ssehub_webhook_deliveries_total{result=delivered}"]
                    for node in nodes
                )
                < 2
            ):
                await anyio.sleep(0.05)
        received = hook.received()
    bodies = by_id(received)
    assert len(received) == len(bodies) == 2
    assert sorted(body["type"] for body in bodies.values()) == ["user.offline", "user.online"]
    assert all(request["valid"] for request in received)


async def test_a_sqlite_hub_stopped_with_a_user_online_sends_user_offline_after_a_restart(
    start_server: ServerFactory, receiver: ReceiverFactory, tmp_path: Path
) -> None:
    hook = receiver()
    server = start_server(*sending_to(hook), store=f"sqlite:///{tmp_path}/hub.db")
    async with Stream(server.url, "alice") as tab:
        await greeted(tab)
        (online,) = await hook.wait_for(1)
        await metric_reaches(server, "ssehub_webhook_deliveries_total{result=delivered}", 1)
        server.stop()  # SIGTERM: alice goes offline as the hub stops, sent by no one yet
    assert len(hook.received()) == 1
    server.start()
    offline = (await hook.wait_for(2))[1]
    assert json.loads(offline["body"])["type"] == "user.offline"
    assert json.loads(online["body"])["type"] == "user.online"
    assert offline["id"] != online["id"]
