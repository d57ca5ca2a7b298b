"""Prometheus metrics of a hub, read from its counters when scraped.

The hub keeps plain integers (`HubStats`) and a `LatencyHistogram`; nothing on the
delivery path touches prometheus-client. `hub_registry` makes a registry per app with a
collector that turns those numbers into ``ssehub_*`` metrics at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ssehub import __version__
from ssehub.hub import Hub

NAMESPACE = "ssehub"

# (metric name without namespace and _total, HubStats attribute, help)
_COUNTERS = (
    ("messages_accepted", "accepted", "Messages appended to users' logs (sends and broadcasts)."),
    ("messages_delivered", "delivered", "Message frames handed to open streams, live."),
    ("messages_replayed", "replayed", "Messages sent on connect: missed ones, offline queue."),
    ("messages_queued_offline", "queued_offline",
     "Messages accepted for users with no stream open on this node."),
    ("slow_consumers_dropped", "dropped_slow", "Streams closed because they could not keep up."),
    ("streams_refused", "refused", "Streams refused by a connection limit."),
    ("connects", "connects", "Streams opened."),
    ("disconnects", "disconnects", "Streams closed, for any reason."),
)  # fmt: skip


class HubCollector(Collector):
    """Reads a hub's counters and gauges when Prometheus scrapes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.stats
        yield InfoMetricFamily(
            f"{NAMESPACE}_build", "ssehub version.", value={"version": __version__}
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_open_streams", "Streams open on this node.", value=hub.open_streams
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_connected_users",
            "Users with at least one stream open on this node.",
            value=hub.local_users,
        )
        for name, attribute, text in _COUNTERS:
            yield CounterMetricFamily(
                f"{NAMESPACE}_{name}", text, value=getattr(stats, attribute, 0)
            )
        transitions = CounterMetricFamily(
            f"{NAMESPACE}_presence_events",
            "Presence events this node emitted (user.online, user.offline, message.undelivered).",
            labels=["type"],
        )
        for type_, count in hub.presence.emitted.items():
            transitions.add_metric([type_], count)
        yield transitions
        yield GaugeMetricFamily(
            f"{NAMESPACE}_undelivered_checks_pending",
            "Messages accepted on this node whose undelivered check is still to come.",
            value=hub.presence.awaiting,
        )
        latency = stats.store_latency
        yield HistogramMetricFamily(
            f"{NAMESPACE}_store_append_seconds",
            "Time the store took to append messages (one batch per call).",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )


def hub_registry(hub: Hub) -> CollectorRegistry:
    """A registry of its own for one hub (so several apps in a process do not clash)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return registry
