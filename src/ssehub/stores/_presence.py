"""The presence ledger: a store's capability to decide presence transitions once.

Which node's stream makes a user online, when the user's last stream anywhere has been
closed long enough to be offline, and where a new stream of a user starts: decisions
that must be taken once for a whole cluster, so they are taken where the nodes meet,
in the store. Every transition is appended to the presence log (`PRESENCE_LOG`), a
per-user log like any other, under a key no user id can take (user ids hold no control
characters); its ids are the events' ids, and `/sse/events/presence` replays and fans it
out as any stream.

A store that is not shared (memory, SQLite: one process) uses `LocalLedger`; a store
that is offers its own through `ledger_for`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import datetime
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

import orjson

from ssehub.events import event_key
from ssehub.stores.base import Store

PRESENCE_LOG: Final = "\x1fpresence"
EMIT_CHUNK: Final = 256  # transitions a local ledger appends per event-loop step

USER_ONLINE: Final = "user.online"
USER_OFFLINE: Final = "user.offline"
MESSAGE_UNDELIVERED: Final = "message.undelivered"


def rfc3339(at: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``2026-11-30T10:42:21.123Z``.

    The text of ``datetime.fromtimestamp(at, UTC)``: microseconds rounded half to
    even, milliseconds cut. The date and time up to the second are formatted once per
    second (a burst of streams opening formats thousands of times in the same one).
    """
    fraction, whole = math.modf(at)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    elif micro < 0:
        whole -= 1
        micro += 1_000_000
    return f"{_to_second(int(whole))}{micro // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _to_second(whole: int) -> str:
    return datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


class Emitted(NamedTuple):
    """A transition the ledger decided and appended to the presence log."""

    id: str
    type: str
    user_id: str
    at: float


def log_payload(type_: str, user_id: str, at_text: str, message: object = None) -> bytes:
    """A presence log entry: the event's JSON body without its id (the log gives it)."""
    body: dict[str, object] = {"type": type_, "user_id": user_id, "at": at_text}
    if message is not None:
        body["message"] = message
    return orjson.dumps(body)


class PresenceLedger(abc.ABC):
    """Decides presence transitions for the cluster and appends them to the log.

    Calls for one node come from one task, in the order the node saw its streams open
    and close.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @abc.abstractmethod
    async def opened(self, opens: Sequence[tuple[str, float, str]]) -> list[Emitted]:
        """This node has streams of these users (``(user, at, at as RFC 3339)``).

        Returns the ``user.online`` events of those who were offline everywhere. Also
        the node's heartbeat: called again every keep-alive with every local user.
        """

    @abc.abstractmethod
    async def closed(self, closes: Sequence[tuple[str, float, str]], grace: float) -> None:
        """This node has no more streams of these users, since ``at``."""

    @abc.abstractmethod
    async def due(self, grace: float) -> list[Emitted]:
        """The ``user.offline`` events now due: no stream anywhere for ``grace`` s.

        Also those of users whose only streams were on nodes that stopped answering.
        """

    async def finish(self) -> list[Emitted]:
        """This node stops: transitions only it could still decide (none if shared)."""
        return []

    @abc.abstractmethod
    async def start_after(self, user_id: str) -> str | None:
        """Where a new stream starts without ``Last-Event-ID``, when this node has none.

        After the newest event of the user if another node has a stream of the user
        open (it got them all), else after the user's cursor (the offline queue).
        """

    @abc.abstractmethod
    async def record_delivered(self, cursors: Mapping[str, str], keep: float) -> None:
        """Remember, for ``keep`` seconds, the newest id delivered to each user here."""

    @abc.abstractmethod
    async def delivered(self, user_ids: Sequence[str]) -> list[str | None]:
        """The newest id delivered to each user on any node, in the last ``keep`` s."""

    async def append(self, payloads: Sequence[bytes]) -> list[str]:
        """Append entries to the presence log; their ids, in order."""
        stored = await self.store.append_many([(PRESENCE_LOG, p) for p in payloads])
        return [event.id for event in stored]


class LocalLedger(PresenceLedger):
    """The ledger of a store one process owns: the process's own streams are all."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        # user -> when its last stream closed, or None while one is open
        self._online: dict[str, tuple[float, str] | None] = {}
        self._closing: collections.deque[tuple[float, str, tuple[float, str]]] = collections.deque()
        self._delivered: dict[str, tuple[tuple[int, int], str, float]] = {}

    async def _emit(self, type_: str, items: list[tuple[str, float, str]]) -> list[Emitted]:
        emitted: list[Emitted] = []
        for start in range(0, len(items), EMIT_CHUNK):
            if start:
                # A burst (10,000 users going offline together) is 10 us a user: the
                # streams' deliveries go in between the chunks, not after all of them.
                await asyncio.sleep(0)
            chunk = items[start : start + EMIT_CHUNK]
            ids = await self.append([log_payload(type_, user, text) for user, _, text in chunk])
            emitted += (Emitted(i, type_, u, at) for i, (u, at, _) in zip(ids, chunk, strict=True))
        return emitted

    async def opened(self, opens: Sequence[tuple[str, float, str]]) -> list[Emitted]:
        went: list[tuple[str, float, str]] = []
        for user, at, text in opens:
            if user not in self._online:
                went.append((user, at, text))
            self._online[user] = None
        return await self._emit(USER_ONLINE, went)

    async def closed(self, closes: Sequence[tuple[str, float, str]], grace: float) -> None:
        for user, at, text in closes:
            if user in self._online:
                self._online[user] = (at, text)
                self._closing.append((at + grace, user, (at, text)))

    async def due(self, grace: float) -> list[Emitted]:
        now = time.time()
        went: list[tuple[str, float, str]] = []
        while self._closing and self._closing[0][0] <= now:
            _, user, closed = self._closing.popleft()
            if self._online.get(user, ()) == closed:  # not reopened since
                del self._online[user]
                went.append((user, *closed))
        return await self._emit(USER_OFFLINE, went)

    async def finish(self) -> list[Emitted]:
        # The process stops: whoever is still online goes offline now (when the last
        # stream closed, if it did), so events still alternate after a restart.
        now = time.time()
        went = [(user, *(closed or (now, rfc3339(now)))) for user, closed in self._online.items()]
        self._online.clear()
        self._closing.clear()
        return await self._emit(USER_OFFLINE, went)

    async def start_after(self, user_id: str) -> str | None:
        return (await self.store.get_user(user_id)).cursor

    async def record_delivered(self, cursors: Mapping[str, str], keep: float) -> None:
        now = time.monotonic()
        delivered = self._delivered
        for user, event_id in cursors.items():
            key = event_key(event_id)
            known = delivered.get(user)
            if known is None or known[0] < key:
                delivered[user] = (key, event_id, now + keep)
        if len(delivered) > 2 * len(cursors) + 1024:
            for user in [u for u, (_, _, until) in delivered.items() if until < now]:
                del delivered[user]

    async def delivered(self, user_ids: Sequence[str]) -> list[str | None]:
        return [known[1] if (known := self._delivered.get(u)) else None for u in user_ids]


def ledger_for(store: Store) -> PresenceLedger:
    """The presence ledger of a store: its own if it is shared, else a `LocalLedger`."""
    make = getattr(store, "presence_ledger", None)
    if store.shared and callable(make):
        ledger: PresenceLedger = make()
        return ledger
    return LocalLedger(store)
