"""Webhook delivery: presence events POSTed, signed, to the backend, at least once.

Each event handed to a `WebhookSender` (a `ssehub.presence.PresenceListener`) is put in the
store's outbox (`ssehub.stores.outbox`) before anything is sent, then POSTed by the
sender that claims it: on a non-2xx answer or after `TIMEOUT` seconds it is given back
to the outbox, due again after a back-off (`retry_delay`), until it is received or has
been retried for `GIVE_UP_AFTER` seconds. The contract: CONTRACT.md, "Webhooks".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import heapq
import hmac
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

import httpx
import orjson

from ssehub._latency import LatencyHistogram
from ssehub._tasks import Service, TaskOwner, cancel_and_wait
from ssehub.exceptions import StoreUnavailable
from ssehub.presence import PresenceEvent
from ssehub.settings import Settings
from ssehub.stores.outbox import Delivery, HasOutbox, Outbox, outbox_of

logger = logging.getLogger("ssehub.webhooks")

TIMEOUT: Final = 5.0  # seconds one attempt may take, answer included
FIRST_RETRY: Final = 1.0  # seconds before the first retry; each next one waits twice as long
MAX_INTERVAL: Final = 300.0  # the longest wait between two attempts
GIVE_UP_AFTER: Final = 3600.0  # a delivery failing this long after its event is dropped
MAX_QUEUED: Final = 100_000  # events waiting to be put in the outbox; beyond, dropped
# Seconds, from an answer at once to one after the longest back-off.
LATENCY_BUCKETS: Final = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)
SIGNATURE_HEADER: Final = "Ssehub-Signature"
ID_HEADER: Final = "Ssehub-Webhook-Id"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Ssehub-Signature`` header of ``body`` sent at ``timestamp`` (Unix seconds).

    ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by secret>``.
    """
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay(
    attempts: int, *, first: float = FIRST_RETRY, longest: float = MAX_INTERVAL
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
    return min(first * 2.0 ** min(attempts - 1, 32), longest)


@dataclasses.dataclass(slots=True)
class WebhookStats:
    """Counters of a sender, read by the metrics collector.

    Attributes:
        delivered: events the receiver answered with a 2xx.
        dropped: events given up on (retried too long, or never kept).
        failures: failed attempts, by reason: ``status`` (non-2xx), ``timeout``,
            ``network``.
        pending: deliveries in the outbox when last looked at (every node's, on Redis).
        latency: seconds from an event to its 2xx answer.
    """

    delivered: int = 0
    dropped: int = 0
    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    pending: int = 0
    latency: LatencyHistogram = dataclasses.field(
        default_factory=lambda: LatencyHistogram(LATENCY_BUCKETS)
    )


class WebhookSender(Service):
    """Puts events in an outbox and POSTs them, signed, until received.

    Call it with each event (it is a presence listener); run it between `start` and
    `close`, while the outbox's store is open.

    Args:
        outbox: where deliveries are kept until received.
        url: the receiver.
        secret: the HMAC-SHA256 key of the signature.
        client: the HTTP client to send with (closed by the caller); one of our own
            if None.
        concurrency: attempts in flight at once.
        timeout: seconds one attempt may take.
        first_retry, max_interval, give_up_after: the back-off (see `retry_delay`).
        poll_interval: seconds between looks for due deliveries (other nodes' and
            retries); a new event of this node is looked for at once.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        url: str,
        secret: str,
        client: httpx.AsyncClient | None = None,
        concurrency: int = 16,
        timeout: float = TIMEOUT,
        first_retry: float = FIRST_RETRY,
        max_interval: float = MAX_INTERVAL,
        give_up_after: float = GIVE_UP_AFTER,
        poll_interval: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self.stats = WebhookStats()
        self._secret = secret
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=concurrency)
        )
        self._concurrency = concurrency
        self._timeout = timeout
        self._first_retry = first_retry
        self._max_interval = max_interval
        self._give_up_after = give_up_after
        self._poll_interval = poll_interval
        self._queued: collections.deque[Delivery] = collections.deque()
        self._queued_wakeup = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._inflight: dict[str, Delivery] = {}
        self._retries_due: list[float] = []  # a heap: when this node's retries are due
        self._tasks = TaskOwner()
        self._putter: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start putting and sending."""
        self._putter = self._spawn(self._put_forever(), "ssehub-webhook-put")
        self._spawn(self._send_forever(), "ssehub-webhook-send")

    async def close(self, *, flush_timeout: float = 5.0) -> None:
        """Put what was queued (for up to ``flush_timeout`` s), stop, hand back claims.

        An attempt cut short is due again at once, for whichever node (or restart)
        claims it next.
        """
        await cancel_and_wait(self._putter)  # the flush below puts what is left
        await self.flush(flush_timeout)
        await self._tasks.cancel_all()
        for delivery in list(self._inflight.values()):
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.outbox.retry(delivery, 0.0)
        self._inflight.clear()
        if self._own_client:
            await self._client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._tasks.spawn(coro, name)

    # -- events in ------------------------------------------------------------------

    def __call__(self, event: PresenceEvent) -> None:
        """Queue an event to be kept in the outbox and sent; never blocks.

        After `close`, the event is kept by the next `flush` (for a restart, or another
        node, to send).
        """
        if len(self._queued) >= MAX_QUEUED:
            logger.warning("webhook event %s dropped: the sender is too far behind", event.id)
            self.stats.dropped += 1
            return
        body = orjson.dumps(event.body())
        self._queued.append(Delivery(event.id, body, time.time()))
        self._queued_wakeup.set()

    async def _put_forever(self) -> None:
        pause = self._first_retry
        while True:
            await self._queued_wakeup.wait()
            self._queued_wakeup.clear()
            try:
                await self._put_queued()
                pause = self._first_retry
            except StoreUnavailable as exc:
                logger.warning("webhook events not kept yet, retrying: %s", exc)
                self._queued_wakeup.set()
                await asyncio.sleep(pause)
                pause = min(pause * 2, self._max_interval)

    async def _put_queued(self) -> None:
        # Taken before the put, so a flush beside the putter never puts one twice.
        while self._queued:
            delivery = self._queued.popleft()
            try:
                await self.outbox.put(delivery)
            except BaseException:
                self._queued.appendleft(delivery)
                raise
            self._wakeup.set()

    async def flush(self, timeout: float = 5.0) -> None:
        """Put every queued event in the outbox, for up to ``timeout`` s; drop the rest.

        The hub's presence awaits this as it stops, after its last events.
        """
        with contextlib.suppress(TimeoutError, StoreUnavailable):
            async with asyncio.timeout(timeout):
                await self._put_queued()
        if self._queued:
            logger.warning("%d webhook events were not kept before shutdown", len(self._queued))
            self.stats.dropped += len(self._queued)
            self._queued.clear()

    # -- sending ----------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            self._wakeup.clear()
            free = self._concurrency - len(self._inflight)
            if free > 0:
                try:
                    for delivery in await self.outbox.claim(free):
                        self._inflight[delivery.id] = delivery
                        self._spawn(self._attempt(delivery), "ssehub-webhook-attempt")
                    self.stats.pending = await self.outbox.pending()
                except StoreUnavailable as exc:
                    logger.warning("webhook outbox unavailable: %s", exc)
            now = time.monotonic()
            while self._retries_due and self._retries_due[0] <= now:
                heapq.heappop(self._retries_due)
            soonest = self._retries_due[0] - now if self._retries_due else self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(soonest, self._poll_interval)):
                    await self._wakeup.wait()

    async def _attempt(self, delivery: Delivery) -> None:
        # Cut short here by `close`, the delivery stays in ``_inflight`` to be handed back.
        failure = await self._post(delivery)
        try:
            if failure is None:
                await self.outbox.remove(delivery)
                self.stats.delivered += 1
                self.stats.latency.observe(max(0.0, time.time() - delivery.created))
                return
            self.stats.failures[failure] += 1
            attempts = delivery.attempts + 1
            if time.time() - delivery.created >= self._give_up_after:
                logger.warning("webhook %s dropped after %d attempts: %s",
                               delivery.id, attempts, failure)  # fmt: skip
                await self.outbox.remove(delivery)
                self.stats.dropped += 1
                return
            delay = retry_delay(attempts, first=self._first_retry, longest=self._max_interval)
            logger.info("webhook %s attempt %d failed (%s); retrying in %.0f s",
                        delivery.id, attempts, failure, delay)  # fmt: skip
            await self.outbox.retry(dataclasses.replace(delivery, attempts=attempts), delay)
            # A little late rather than early: the outbox compares with its own clock.
            heapq.heappush(self._retries_due, time.monotonic() + delay + 0.005)
        except StoreUnavailable as exc:
            # The claim stays in the outbox; a shared one frees it when its lease ends.
            logger.warning("webhook %s outcome not recorded: %s", delivery.id, exc)
        finally:
            self._inflight.pop(delivery.id, None)
            self._wakeup.set()

    async def _post(self, delivery: Delivery) -> str | None:
        """One signed attempt; None when the receiver answered 2xx, else why not."""
        headers = {
            "Content-Type": "application/json",
            ID_HEADER: delivery.id,
            SIGNATURE_HEADER: sign(self._secret, delivery.body, int(time.time())),
        }
        try:
            async with asyncio.timeout(self._timeout):
                request = self._client.build_request(
                    "POST", self.url, content=delivery.body, headers=headers
                )
                # The answer's body is never read: only its status counts.
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"
        except httpx.HTTPError as exc:
            logger.debug("webhook %s: %s", delivery.id, exc)
            return "network"
        return None if 200 <= response.status_code < 300 else "status"


def create_sender(settings: Settings, store: object) -> WebhookSender | None:
    """The sender ``settings`` ask for, keeping deliveries in ``store``; None without a URL."""
    if not settings.webhook_url:
        return None
    if not isinstance(store, HasOutbox):
        logger.warning("the store keeps no webhook deliveries: they are kept in memory only")
    return WebhookSender(outbox_of(store), url=settings.webhook_url, secret=settings.webhook_secret)
