"""The webhook outbox: deliveries kept until the receiver has them, and who may send them.

An outbox is an optional capability of a store (`HasOutbox`), separate from the
`Store` contract: a store that has one keeps pending webhook deliveries where it keeps
messages, so they survive what its messages survive. `outbox_of` gives a store's
outbox, or an in-process `MemoryOutbox` for a store without one.

Each delivery is held by one sender at a time: `Outbox.claim` hands out due
deliveries nobody holds, and `Outbox.retry` or `Outbox.remove` ends the hold. A
shared outbox (several nodes) holds a claim for a lease only, so a delivery claimed by
a node that died is claimed again by another once the lease runs out.
"""

from __future__ import annotations

import abc
import dataclasses
import heapq
import time
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook event on its way to the receiver.

    Attributes:
        id: the event's id, the same on every attempt (receivers deduplicate by it).
        body: the JSON body, exactly as sent on every attempt.
        created: Unix time the delivery was put in the outbox.
        attempts: attempts made so far, all failed.
        claim: the outbox's mark of the hold that handed this delivery out.
    """

    id: str
    body: bytes
    created: float
    attempts: int = 0
    claim: str = ""


class Outbox(abc.ABC):
    """Pending webhook deliveries, each claimed by one sender at a time.

    Every method may raise `ssehub.exceptions.StoreUnavailable`.
    """

    #: Whether several processes share the outbox (claims are then leases).
    shared: bool = False

    @abc.abstractmethod
    async def put(self, delivery: Delivery) -> None:
        """Keep a new delivery, due now. A second put of the same id changes nothing.

        When this returns, the delivery is as durable as the store's messages.
        """

    @abc.abstractmethod
    async def claim(self, limit: int) -> list[Delivery]:
        """Hand out up to ``limit`` due deliveries nobody holds, oldest due first.

        The caller holds them until it calls `retry` or `remove` (on a shared outbox,
        or until the lease runs out).
        """

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, delay: float) -> None:
        """Give a claimed delivery back, due in ``delay`` seconds, with its ``attempts``.

        Does nothing when the claim was lost (a shared outbox's lease ran out and
        another node claimed the delivery).
        """

    @abc.abstractmethod
    async def remove(self, delivery: Delivery) -> None:
        """Forget a claimed delivery: delivered, or given up on."""

    @abc.abstractmethod
    async def pending(self) -> int:
        """Deliveries kept, claimed or not."""


@runtime_checkable
class HasOutbox(Protocol):
    """A store that keeps webhook deliveries itself (an optional capability)."""

    def outbox(self) -> Outbox:
        """The store's outbox; usable between the store's ``start`` and ``close``."""


def outbox_of(store: object) -> Outbox:
    """The store's own outbox, or a `MemoryOutbox` when the store has none."""
    if isinstance(store, HasOutbox):
        return store.outbox()
    return MemoryOutbox()


class MemoryOutbox(Outbox):
    """Deliveries in this process's memory: best effort, lost when the process ends.

    Claims last until `retry` or `remove`; nothing else shares the outbox.
    """

    def __init__(self) -> None:
        self._kept: dict[str, Delivery] = {}
        self._due: list[tuple[float, int, str]] = []  # a heap; the int keeps put order
        self._order = 0

    def _schedule(self, delivery_id: str, due: float) -> None:
        self._order += 1
        heapq.heappush(self._due, (due, self._order, delivery_id))

    async def put(self, delivery: Delivery) -> None:
        if delivery.id not in self._kept:
            self._kept[delivery.id] = dataclasses.replace(delivery, claim="")
            self._schedule(delivery.id, time.time())

    async def claim(self, limit: int) -> list[Delivery]:
        now = time.time()
        claimed: list[Delivery] = []
        # A delivery in the heap is held by nobody: claiming pops it, retry pushes it.
        while self._due and self._due[0][0] <= now and len(claimed) < limit:
            _, _, delivery_id = heapq.heappop(self._due)
            delivery = self._kept.get(delivery_id)
            if delivery is not None:
                claimed.append(delivery)
        return claimed

    async def retry(self, delivery: Delivery, delay: float) -> None:
        if delivery.id in self._kept:
            self._kept[delivery.id] = dataclasses.replace(delivery, claim="")
            self._schedule(delivery.id, time.time() + delay)

    async def remove(self, delivery: Delivery) -> None:
        self._kept.pop(delivery.id, None)

    async def pending(self) -> int:
        return len(self._kept)
