"""Presence events: a user went online or offline, a message reached nobody in time.

The hub tells this module, through a narrow interface, when a stream of a user opens
or closes on this node and when a message is accepted or delivered (`Presence.opened`,
`closed`, `accepted`, and the `recent` deliveries it writes while the undelivered check
is on). From that it has the store's presence ledger decide,
cluster-wide and exactly once, the transitions a backend cares about, and hands each
one as a `PresenceEvent` to every `PresenceListener` subscribed on the node that emits
it (the webhook sender is one; an application's own callback or `Presence.events` may
be others). Every event is also in the presence log, which ``/sse/events/presence``
serves on every node.

The event types and the JSON body are CONTRACT.md's ("Webhooks"); the event as data
is in `_presence_events`, and re-exported here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sequence
from typing import Final

from ssehub._presence_events import (
    EVENT_TYPES,
    PresenceEvent,
    PresenceListener,
    PresenceListeners,
    TextPayload,
    UndeliveredMessage,
    as_published,
    event_from_log,
    message_json,
)
from ssehub.events import StoredEvent, event_key
from ssehub.exceptions import StoreUnavailable
from ssehub.stores._presence import (
    MESSAGE_UNDELIVERED,
    USER_OFFLINE,
    USER_ONLINE,
    Emitted,
    PresenceLedger,
    ledger_for,
    log_payload,
    rfc3339,
)
from ssehub.stores.base import Store

__all__ = [
    "DEFAULT_OFFLINE_GRACE",
    "EVENT_TYPES",
    "MESSAGE_UNDELIVERED",
    "USER_OFFLINE",
    "USER_ONLINE",
    "Presence",
    "PresenceEvent",
    "PresenceListener",
    "PresenceListeners",
    "TextPayload",
    "UndeliveredMessage",
    "as_published",
    "event_from_log",
    "rfc3339",
]

logger = logging.getLogger("ssehub.presence")

DEFAULT_OFFLINE_GRACE: Final = 3.0
_MAX_TICK: Final = 0.5
_MIN_TICK: Final = 0.05
_CHECK_BATCH: Final = 10_000  # messages checked per tick at most
# How long the worker lets streams opening and closing gather before it writes them:
# a burst of connects then costs one ledger call per batch, not one per stream.
_GATHER: Final = 0.02


class Presence(PresenceListeners):
    """A node's presence tracker: `Hub.presence`; subscribe to its events here.

    Args:
        offline_grace: seconds a user's last stream must stay closed, with none
            reopened anywhere, before ``user.offline`` (a reload makes no noise).
        undelivered_after: seconds after which a message that reached no stream of its
            user yields ``message.undelivered``; None (the default) turns the check off,
            and then it costs nothing on the delivery path.

    Attributes:
        emitted: events this node emitted, by type.
        awaiting: messages accepted here whose undelivered check is still to come.
    """

    def __init__(
        self,
        *,
        offline_grace: float = DEFAULT_OFFLINE_GRACE,
        undelivered_after: float | None = None,
    ) -> None:
        super().__init__()
        self.offline_grace = offline_grace
        self.undelivered_after = undelivered_after
        self.tracks_delivery = undelivered_after is not None
        limits = [offline_grace / 4, _MAX_TICK]
        if undelivered_after is not None:
            limits.append(undelivered_after / 4)
        #: how often offline transitions are looked for, and delivery cursors shared
        self.tick = max(_MIN_TICK, min(limits))
        self.emitted: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.awaiting = 0
        self._ledger: PresenceLedger | None = None
        self._ops: collections.deque[tuple[int, Sequence[str], float]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._busy = asyncio.Lock()  # one step at a time: the worker's, or the last one
        #: user -> newest id delivered here since the last share (the hub writes it)
        self.recent: dict[str, str] = {}
        # One entry per accepted batch, of flat lists of strings, bytes and int pairs,
        # which the garbage collector does not have to follow (see `_Accepted`).
        self._accepted: collections.deque[_Accepted] = collections.deque()

    def bind(self, store: Store) -> None:
        """Take decisions through ``store``'s presence ledger."""
        self._ledger = ledger_for(store)

    @property
    def ledger(self) -> PresenceLedger:
        """The store's presence ledger (after `bind`)."""
        if self._ledger is None:
            raise RuntimeError("Presence.bind(store) first")
        return self._ledger

    # -- fed by the hub -------------------------------------------------------------

    def opened(self, user_id: str) -> None:
        """The first stream of the user on this node opened."""
        self._ops.append((_OPENED, (user_id,), time.time()))
        self._wakeup.set()

    def closed(self, user_id: str) -> None:
        """The last stream of the user on this node closed."""
        self._ops.append((_CLOSED, (user_id,), time.time()))
        self._wakeup.set()

    def heartbeat(self, user_ids: Sequence[str]) -> None:
        """This node still has streams of these users (every keep-alive)."""
        if user_ids:
            self._ops.append((_OPENED, user_ids, time.time()))
            self._wakeup.set()

    def accepted(self, items: Sequence[tuple[str, bytes]], stored: Sequence[StoredEvent]) -> None:
        """Messages were accepted on this node (only while `tracks_delivery`).

        A payload whose data was a string is a `TextPayload`. What was delivered, the
        hub writes to `recent` as it delivers (a dict write, not a call, per delivery).
        """
        if self.undelivered_after is not None:
            # Checked one tick after the deadline: other nodes share what they
            # delivered once a tick.
            deadline = time.monotonic() + self.undelivered_after + self.tick
            self.awaiting += len(items)
            self._accepted.append(
                (
                    deadline,
                    time.time() + self.undelivered_after,
                    [user_id for user_id, _ in items],
                    [event.key for event in stored],
                    [event.id for event in stored],
                    [bytes(payload) for _, payload in items],
                    bytes([type(payload) is TextPayload for _, payload in items]),
                )
            )

    async def start_after(self, user_id: str) -> str | None:
        """Where a stream without ``Last-Event-ID`` starts when this node has none of
        the user's (see `PresenceLedger.start_after`)."""
        return await self.ledger.start_after(user_id)

    # -- the worker -------------------------------------------------------------------

    async def run(self) -> None:
        """Decide and emit transitions for ever (the hub owns the task)."""
        next_due = 0.0
        while True:
            try:
                async with asyncio.timeout(self.tick):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            await asyncio.sleep(_GATHER)
            try:
                async with self._busy:
                    await self._apply_ops()
                    if time.monotonic() >= next_due:
                        next_due = time.monotonic() + self.tick
                        self._emit_all(await self.ledger.due(self.offline_grace))
                        if self.undelivered_after is not None:
                            await self._check_delivery()
            except StoreUnavailable as exc:
                logger.warning("presence: store unavailable, retrying: %s", exc)
                await asyncio.sleep(self.tick)

    async def finish(self) -> None:
        """Apply what is queued and the ledger's last transitions (the hub stops)."""
        with_errors = (StoreUnavailable, TimeoutError)
        try:
            async with asyncio.timeout(2.0), self._busy:
                await self._apply_ops()
                self._emit_all(await self.ledger.finish())
        except with_errors as exc:
            logger.warning("presence: could not record the last transitions: %s", exc)
        await self.flush_listeners()

    async def _apply_ops(self) -> None:
        ledger = self.ledger
        while self._ops:
            kind = self._ops[0][0]
            batch: list[tuple[str, float, str]] = []
            count = 0
            for op_kind, user_ids, at in self._ops:
                if op_kind != kind or len(batch) >= 1000:
                    break
                text = rfc3339(at)
                batch += ((user_id, at, text) for user_id in user_ids)
                count += 1
            if kind == _OPENED:
                self._emit_all(await ledger.opened(batch))
            else:
                await ledger.closed(batch, self.offline_grace)
            for _ in range(count):  # only once written: a failed call is retried
                self._ops.popleft()

    async def _check_delivery(self) -> None:
        assert self.undelivered_after is not None
        ledger = self.ledger
        if self.recent:
            recent = dict(self.recent)
            self.recent.clear()  # the hub holds this dict: emptied, never replaced
            try:
                await ledger.record_delivered(recent, keep=self.undelivered_after + 60.0)
            except StoreUnavailable:
                for user_id, event_id in recent.items():
                    self.recent.setdefault(user_id, event_id)
                raise
        now = time.monotonic()
        due: list[_Accepted] = []
        count = 0
        while self._accepted and self._accepted[0][0] <= now and count < _CHECK_BATCH:
            due.append(self._accepted.popleft())
            count += len(due[-1][3])
        if not due:
            return
        try:
            # One look-up per user per tick, however many messages the user got.
            users = list({user_id for entry in due for user_id in entry[2]})
            cursors = await ledger.delivered(users)
            reached = {u: event_key(c) for u, c in zip(users, cursors, strict=True) if c}
            lost: list[tuple[str, float, UndeliveredMessage]] = []
            for _, at, batch_users, keys, ids, payloads, texts in due:
                for index, user_id in enumerate(batch_users):
                    cursor = reached.get(user_id)
                    if cursor is None or cursor < keys[index]:
                        data, name = as_published(payloads[index], bool(texts[index]))
                        lost.append((user_id, at, UndeliveredMessage(ids[index], name, data)))
            entries = [
                log_payload(MESSAGE_UNDELIVERED, u, rfc3339(at), message_json(m))
                for u, at, m in lost
            ]
            emitted = await ledger.append(entries) if entries else []
        except BaseException:
            self._accepted.extendleft(reversed(due))  # checked again next tick
            raise
        self.awaiting -= count
        for event_id, (user_id, at, message) in zip(emitted, lost, strict=True):
            self._emit(PresenceEvent(event_id, MESSAGE_UNDELIVERED, user_id, at, message))

    def _emit_all(self, emitted: list[Emitted]) -> None:
        for item in emitted:
            self._emit(PresenceEvent(item.id, item.type, item.user_id, item.at))

    def _emit(self, event: PresenceEvent) -> None:
        self.emitted[event.type] = self.emitted.get(event.type, 0) + 1
        logger.info("presence: %s %r (%s)", event.type, event.user_id, event.id)
        self.emit(event)


_Accepted = tuple[float, float, list[str], list[tuple[int, int]], list[str], list[bytes], bytes]
"""(check time, deadline as Unix time, users, keys, ids, payloads, 1 for a string's)"""
_OPENED: Final = 1
_CLOSED: Final = 0
