"""Two ssehub nodes on a real Redis Cluster: one hub, through resharding and failover.

The cluster (three masters, each with a replica) is started by the module; a user's
slot is moved to another master while messages are published (``MOVED``/``ASK``), and
a master is killed under load (its replica takes over). Each drill runs through both
front doors, and every wait in it is bounded: a failure is an assertion, never a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from ssehub.events import event_key
from ssehub.stores._redis_keys import Keys, slot
from tests.conftest import ServerFactory, ServerProcess
from tests.redis_cluster import Cluster, Node
from tests.sse import Stream
from tests.test_multinode import eventually, greeted

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three masters with a replica each, failing over after a second of silence."""
    running = Cluster(tmp_path_factory.mktemp("cluster"), replicas=1).start()
    yield running
    running.stop()


def owner(cluster: Cluster, key: str) -> tuple[Node, str]:
    """The master that serves a key's slot, and its cluster node id."""
    wanted = slot(key)
    for node in cluster.masters():
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= wanted <= last and int(master[1]) == node.port:
                    return node, master[2].decode()
    raise AssertionError(f"no master serves slot {wanted}")


def node_id(node: Node) -> str:
    return node.cli("cluster", "myid").strip()


async def load(
    client: httpx.AsyncClient,
    server: ServerProcess,
    user: str,
    stop: asyncio.Event,
    *,
    retry: bool = False,
    accepted: dict[str, float] | None = None,
) -> tuple[dict[str, float], list[float]]:
    """Publish numbered messages until ``stop``; every refusal must be a 503 JSON.

    With ``retry``, each message carries an ``Idempotency-Key`` and is sent again
    until it is accepted; without, a refused message is given up. ``accepted``, if
    given, is filled in as messages are accepted (see `accepted_since`).

    Returns:
        When each message was accepted, and how long each refusal took.
    """
    accepted = {} if accepted is None else accepted
    refusals: list[float] = []
    number = 0
    while not stop.is_set():
        data = f"m{number}"
        number += 1
        headers = {"Idempotency-Key": f"{user}-{data}"} if retry else {}
        while True:
            started = time.monotonic()
            try:
                answer = await client.post(
                    f"{server.url}/sse/users/{user}/messages", json={"data": data}, headers=headers
                )
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 202:
                accepted[data] = time.monotonic()
                break
            if answer is not None:
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == "application/json"
                assert answer.headers["retry-after"]
                refusals.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
            if not retry:
                break
        await asyncio.sleep(0.005)
    return accepted, refusals


async def accepted_since(accepted: dict[str, float], since: float, count: int = 5) -> None:
    """Wait until ``count`` messages were accepted after ``since`` (monotonic time), so
    that a drill sees traffic however slow a loaded machine makes each publish."""

    async def enough() -> bool:
        return sum(when > since for when in accepted.values()) >= count

    await eventually(enough, timeout=30.0)


async def publish_end(client: httpx.AsyncClient, server: ServerProcess, user: str) -> None:
    """Publish the message ``end``, again after a 503 (once accepted, exactly once)."""
    headers = {"Idempotency-Key": f"{user}-end"}
    async with asyncio.timeout(20):
        while True:
            answer = await client.post(
                f"{server.url}/sse/users/{user}/messages", json={"data": "end"}, headers=headers
            )
            if answer.status_code == 202:
                return
            assert answer.status_code == 503, answer.text
            await asyncio.sleep(0.1)


async def collect(stream: Stream, until: str, timeout: float = 20.0) -> list[tuple[str, str]]:
    """(id, data) of the stream's messages until one with data ``until``."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1][1] != until:
            message = await stream.next_message(timeout=timeout)
            assert message is not None, (
                f"the stream ended after {seen[-3:]}: {stream.status_code} "
                f"{stream.error_body[:200]!r} {stream.error!r}"
            )
            seen.append((message.id, message.data))
    return seen


async def replay_after(server: ServerProcess, user: str, last_id: str) -> list[tuple[str, str]]:
    """(id, data) of what a stream opened with ``Last-Event-ID: last_id`` gets, until
    ``end``; opened again while it is refused (the node's subscriptions may still be
    settling after the move): a 503, or, as ``Accept: text/event-stream`` asks, an empty
    stream with a ``retry:`` hint."""
    async with asyncio.timeout(30):
        while True:
            async with Stream(server.url, user, headers={"Last-Event-ID": last_id}) as late:
                if late.status_code != 503:
                    first = await late.next_message(timeout=20.0)
                    assert first is not None, f"the stream ended: {late.error!r}"
                    if first.data or first.retry is None:
                        seen = [(first.id, first.data)]
                        return seen if first.data == "end" else seen + await collect(late, "end")
            await asyncio.sleep(0.2)


def check_delivery(seen: list[tuple[str, str]], accepted: dict[str, float]) -> set[str]:
    """Ids increase, nothing twice; return the accepted messages that never came."""
    keys = [event_key(event_id) for event_id, _ in seen]
    assert keys == sorted(keys), "out of order"
    assert len(set(keys)) == len(keys), "an id came twice"
    datas = [data for _, data in seen]
    assert len(set(datas)) == len(datas), "a message came twice"
    numbers = [int(data[1:]) for data in datas if data.startswith("m")]
    assert numbers == sorted(numbers), "messages out of publishing order"
    return set(accepted) - set(datas)


async def lost_from_history(
    server: ServerProcess,
    user: str,
    seen: list[tuple[str, str]],
    accepted: dict[str, float],
    killed_at: float,
) -> set[str]:
    """The accepted messages the new master's history lacks, replayed after the first seen.

    Each must have been accepted before the kill (asynchronous replication may lose the
    old master's last writes); the history keeps its order and holds nothing twice.
    """
    replayed = [message for message in await replay_after(server, user, seen[0][0]) if message[0]]
    gone = check_delivery([seen[0], *replayed], accepted)  # the greeting has no id
    assert all(accepted[data] <= killed_at for data in gone), gone
    return gone


def nodes(start_server: ServerFactory, cluster: Cluster, prefix: str) -> list[ServerProcess]:
    store = f"{cluster.url}?prefix={prefix}&ping_interval=0.2&reconnect_max=0.2"
    return [start_server(store=store, keepalive=0.3) for _ in range(2)]


async def test_a_users_slot_moved_to_another_master_under_load_loses_and_repeats_nothing(
    start_server: ServerFactory, cluster: Cluster, stream_mode: str
) -> None:
    prefix = f"reshard-{stream_mode}"
    node_a, node_b = nodes(start_server, cluster, prefix)
    user = "rita"
    keys = Keys(prefix)
    async with httpx.AsyncClient(timeout=10) as client, Stream(node_a.url, user) as stream:
        await greeted(stream)
        stop = asyncio.Event()
        accepted: dict[str, float] = {}
        publishing = asyncio.create_task(load(client, node_b, user, stop, accepted=accepted))
        await accepted_since(accepted, 0.0, 20)
        source, source_id = owner(cluster, keys.stream(user))
        target = next(n for n in cluster.masters() if n is not source)
        target_id = node_id(target)
        moving = slot(keys.stream(user))
        # Move the slot key by key while publishes go on: they meet ASK, then MOVED.
        target.cli("cluster", "setslot", str(moving), "importing", source_id)
        source.cli("cluster", "setslot", str(moving), "migrating", target_id)
        await asyncio.sleep(0.3)
        deadline = time.monotonic() + 20
        while names := source.cli("cluster", "getkeysinslot", str(moving), "10").split():
            reply = source.cli(
                "migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *names
            )
            assert time.monotonic() < deadline, f"keys stay on the old master: {names} {reply}"
            await asyncio.sleep(0.1)
        for node in cluster.masters():
            node.cli("cluster", "setslot", str(moving), "node", target_id)
        await accepted_since(accepted, time.monotonic())  # through the new master
        stop.set()
        async with asyncio.timeout(30):  # each publish has its own timeout (10 s)
            _, refusals = await publishing
        assert owner(cluster, keys.stream(user))[0] is target
        await publish_end(client, node_b, user)
        seen = await collect(stream, "end")
        assert check_delivery(seen, accepted) == set(), f"lost ({len(refusals)} refused)"
        # A stream that connects afterwards replays the same history from the new master.
        replayed = await replay_after(node_b, user, seen[0][0])
        assert replayed[1:] == seen[1:] or replayed == seen[1:]


async def test_a_master_killed_under_load_fails_over_and_delivery_resumes_in_order(
    start_server: ServerFactory, cluster: Cluster, stream_mode: str
) -> None:
    prefix = f"failover-{stream_mode}"
    node_a, node_b = nodes(start_server, cluster, prefix)
    user = "fred"
    keys = Keys(prefix)
    async with httpx.AsyncClient(timeout=10) as client, Stream(node_a.url, user) as stream:
        await greeted(stream)
        stop = asyncio.Event()
        accepted: dict[str, float] = {}
        publishing = asyncio.create_task(load(client, node_b, user, stop, accepted=accepted))
        await accepted_since(accepted, 0.0, 20)
        victim, _ = owner(cluster, keys.stream(user))
        victim.kill()
        killed_at = time.monotonic()

        async def failed_over() -> bool:
            try:
                return owner(cluster, keys.stream(user))[0] is not victim
            except (AssertionError, redis.RedisError):
                return False

        await eventually(failed_over, timeout=20.0)
        failover_seconds = time.monotonic() - killed_at
        await accepted_since(accepted, time.monotonic())  # through the new master
        stop.set()
        async with asyncio.timeout(30):  # each publish has its own timeout (10 s)
            _, refusals = await publishing
        await publish_end(client, node_b, user)
        seen = await collect(stream, "end")
        lost = check_delivery(seen, accepted)
        gone = await lost_from_history(node_b, user, seen, accepted, killed_at)
        print(
            f"failover in {failover_seconds:.1f} s: {len(accepted)} accepted, "
            f"{len(refusals)} refused, {len(lost)} accepted but not delivered, "
            f"{len(gone)} not in the new master's history"
        )
        # Asynchronous replication may lose what the old master acknowledged just
        # before it died; nothing accepted after the kill is lost.
        assert all(accepted[data] <= killed_at for data in lost), lost
        assert len(lost) <= 3
        assert len(gone) <= 3
        assert any(when > killed_at + failover_seconds for when in accepted.values())
        assert (await client.get(f"{node_a.url}/readyz")).status_code == 200
    victim.start()  # it comes back as a replica of the new master
    cluster.wait_ok()
    victim.wait_replicated()  # so that the next drill's failover finds a synced replica
