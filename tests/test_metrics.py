"""``/metrics`` of a real server, and the latency histogram behind it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ssehub._latency import BUCKETS, LatencyHistogram
from ssehub.client import EventStream, HubClient
from tests.conftest import ServerFactory


def scrape(url: str) -> dict[str, float]:
    """Every sample of ``/metrics`` by name (with labels, for histogram buckets)."""
    answer = httpx.get(url + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return samples


async def first(stream: EventStream) -> str:
    async with asyncio.timeout(10):
        async for event in stream:
            return event.data
    raise AssertionError("the stream ended")


@pytest.mark.anyio
async def test_metrics_count_streams_messages_and_store_latency(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    before = scrape(server.url)
    assert before["ssehub_open_streams"] == 0
    assert before["ssehub_build_info{version=0.1.0}"] == 1

    async with HubClient(server.url) as client:
        connected = asyncio.Event()
        on_state = lambda state, detail: connected.set()  # noqa: E731
        async with client.events("alice", on_state=on_state) as alice:
            reader = asyncio.create_task(first(alice))
            async with asyncio.timeout(10):
                await connected.wait()
            await client.send("alice", "live")
            await client.send("bob", "queued")
            assert await reader == "live"
            during = scrape(server.url)
        async with client.events("bob") as bob:
            assert await first(bob) == "queued"
    after = scrape(server.url)

    assert during["ssehub_open_streams"] == 1
    assert during["ssehub_connected_users"] == 1
    assert after["ssehub_messages_accepted_total"] == 2
    assert after["ssehub_messages_delivered_total"] == 1
    assert after["ssehub_messages_queued_offline_total"] == 1
    assert after["ssehub_messages_replayed_total"] == 1
    assert after["ssehub_connects_total"] == 2
    assert after["ssehub_store_append_seconds_count"] == 2
    assert after["ssehub_store_append_seconds_bucket{le=+Inf}"] == 2
    assert 0 < after["ssehub_store_append_seconds_sum"] < 5
    assert after["ssehub_slow_consumers_dropped_total"] == 0
    assert after["ssehub_streams_refused_total"] == 0


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.0001, 0),
        (0.00011, 1),
        (0.003, 5),
        (2.5, len(BUCKETS) - 1),
        (60.0, len(BUCKETS)),
    ],
)
def test_an_observation_lands_in_the_first_bucket_that_holds_it(
    seconds: float, bucket: int
) -> None:
    histogram = LatencyHistogram()
    histogram.observe(seconds)
    assert histogram.counts[bucket] == 1
    assert (histogram.count, histogram.sum) == (1, seconds)


def test_cumulative_buckets_add_up_and_end_with_infinity() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.00005, 0.002, 0.002, 10.0):
        histogram.observe(seconds)
    pairs = histogram.cumulative()
    assert pairs[0] == ("0.0001", 1)
    assert dict(pairs)["0.0025"] == 3
    assert pairs[-1] == ("+Inf", 4)
    assert [count for _, count in pairs] == sorted(count for _, count in pairs)
