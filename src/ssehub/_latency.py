"""A latency histogram kept as plain numbers: cheap to update, read at scrape time."""

from __future__ import annotations

import bisect
from typing import Final

# Seconds; from a fast in-memory append to a slow networked store.
BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class LatencyHistogram:
    """Counts of observations per bucket (not cumulative), their sum and their number.

    `observe` is a bisect and three additions, so the hub can call it on every store
    round trip; exporters turn it into cumulative buckets when they are scraped.
    """

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets  # upper bounds, increasing
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)`` pairs, ending with ``+Inf``."""
        total = 0
        pairs: list[tuple[str, int]] = []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs
