"""The hub's counters: plain integers the metrics read at scrape time."""

from __future__ import annotations

import dataclasses

from ssehub._latency import LatencyHistogram


@dataclasses.dataclass(slots=True)
class HubStats:
    """Counters the hub keeps as plain integers; metrics read them at scrape time."""

    accepted: int = 0
    delivered: int = 0
    replayed: int = 0
    dropped_slow: int = 0
    connects: int = 0
    disconnects: int = 0
    refused: int = 0
    queued_offline: int = 0
    store_latency: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
