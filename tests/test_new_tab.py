"""A new tab gets what no stream of the user received, never what another tab got."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.sse import Stream
from tests.test_multinode import eventually, greeted, publish, status, unique_prefix

pytestmark = pytest.mark.anyio


async def disconnected(client: httpx.AsyncClient, server: ServerProcess, user: str) -> bool:
    return (await status(client, server, user))["status"] == "disconnected"


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        with unique_prefix() as url:
            yield url
    else:
        yield "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/hub.db"


async def test_a_new_tab_gets_only_new_messages_and_the_offline_queue_still_waits(
    store: str, start_server: ServerFactory
) -> None:
    server = start_server(store=store)
    async with httpx.AsyncClient() as client:
        async with Stream(server.url, "tom") as first:
            await greeted(first)
            seen = [await publish(client, server, "tom", f"m{i}") for i in range(3)]
            assert [m.id for m in await first.messages(3)] == seen
            async with Stream(server.url, "tom") as second:  # no Last-Event-ID
                await greeted(second)
                fresh = await publish(client, server, "tom", "new")
                assert [m.id for m in await second.messages(1)] == [fresh]
                assert [m.id for m in await first.messages(1)] == [fresh]
        await eventually(lambda: disconnected(client, server, "tom"))  # the hub saw them go
        queued = [await publish(client, server, "tom", f"q{i}") for i in range(2)]
        async with Stream(server.url, "tom") as later:  # nobody got these: replayed
            await greeted(later)
            assert [m.id for m in await later.messages(2)] == queued
            async with Stream(server.url, "tom", headers={"Last-Event-ID": seen[0]}) as resumed:
                await greeted(resumed)
                replayed = await resumed.messages(5)
                assert [m.id for m in replayed] == [*seen[1:], fresh, *queued]
