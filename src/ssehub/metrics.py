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
from ssehub.webhooks import WebhookStats

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


class WebhookCollector(Collector):
    """Reads a webhook sender's counters when Prometheus scrapes."""

    def __init__(self, stats: WebhookStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        deliveries = CounterMetricFamily(
            f"{NAMESPACE}_webhook_deliveries",
            "Webhook events by outcome: delivered (a 2xx answer) or dropped (given up on).",
            labels=["result"],
        )
        deliveries.add_metric(["delivered"], stats.delivered)
        deliveries.add_metric(["dropped"], stats.dropped)
        yield deliveries
        failures = CounterMetricFamily(
            f"{NAMESPACE}_webhook_failures",
            "Failed webhook attempts by reason: status (non-2xx), timeout or network.",
            labels=["reason"],
        )
        for reason in ("status", "timeout", "network"):
            failures.add_metric([reason], stats.failures[reason])
        yield failures
        yield GaugeMetricFamily(
            f"{NAMESPACE}_webhook_pending",
            "Webhook deliveries kept in the outbox, not yet received (retries included).",
            value=stats.pending,
        )
        yield HistogramMetricFamily(
            f"{NAMESPACE}_webhook_delivery_seconds",
            "Time from a webhook event to its receiver's 2xx answer, retries included.",
            buckets=stats.latency.cumulative(),
            sum_value=stats.latency.sum,
        )


def hub_registry(hub: Hub, *, webhooks: WebhookStats | None = None) -> CollectorRegistry:
    """A registry of its own for one hub (so several apps in a process do not clash),
    with the webhook sender's metrics when there is one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    if webhooks is not None:
        registry.register(WebhookCollector(webhooks))
    return registry
