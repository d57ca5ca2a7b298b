"""Two ssehub nodes on the master Sentinel names: a failover under load.

A master and a replica watched by Sentinel are started by the module; the master is
killed while a publisher sends numbered messages, each retried with its
``Idempotency-Key`` until it is accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.redis_cluster import SentinelSetup
from tests.sse import Stream
from tests.test_multinode import eventually, greeted
from tests.test_redis_cluster import check_delivery, collect, load, lost_from_history

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """A master, its replica and three Sentinels; a failover after 0.5 s of silence."""
    running = SentinelSetup(tmp_path_factory.mktemp("sentinel"), sentinels=3).start()
    yield running
    running.stop()


@pytest.mark.parametrize("stream_mode", ["fast"], indirect=True)
async def test_a_master_killed_under_load_the_nodes_follow_the_new_one_and_lose_nothing_accepted(
    start_server: ServerFactory, sentinel: SentinelSetup
) -> None:
    store = f"{sentinel.url}?prefix=sentinel&ping_interval=0.2&reconnect_max=0.2"
    node_a, node_b = (start_server(store=store, keepalive=0.3) for _ in range(2))
    user = "sam"
    async with httpx.AsyncClient(timeout=10) as client, Stream(node_a.url, user) as stream:
        await greeted(stream)
        stop = asyncio.Event()
        publishing = asyncio.create_task(load(client, node_b, user, stop, retry=True))
        await asyncio.sleep(0.5)
        old_port = sentinel.master.port
        sentinel.master.kill()
        killed_at = time.monotonic()

        async def failed_over() -> bool:
            return sentinel.master_port() != old_port

        await eventually(failed_over, timeout=20.0)
        failover_seconds = time.monotonic() - killed_at
        await asyncio.sleep(1.0)
        stop.set()
        accepted, refusals = await publishing
        end = await client.post(f"{node_b.url}/sse/users/{user}/messages", json={"data": "end"})
        assert end.status_code == 202, end.text
        seen = await collect(stream, "end")
        lost = check_delivery(seen, accepted)  # also: nothing came twice, in order
        gone = await lost_from_history(node_b, user, seen, accepted, killed_at)
        print(
            f"failover in {failover_seconds:.1f} s: {len(accepted)} accepted, "
            f"{len(refusals)} refusals (longest {max(refusals, default=0):.2f} s), "
            f"{len(lost)} accepted but not delivered, "
            f"{len(gone)} not in the new master's history"
        )
        assert refusals, "the failover refused nothing"
        assert max(refusals) < 3.0  # publishes fail fast, never hang
        # Asynchronous replication may lose what the old master acknowledged just
        # before it died; nothing accepted after the kill is lost.
        assert all(accepted[data] <= killed_at for data in lost), lost
        assert len(gone) <= 3
        assert any(when > killed_at + failover_seconds for when in accepted.values())
        for node in (node_a, node_b):
            assert (await client.get(f"{node.url}/readyz")).status_code == 200
