"""An in-process store: fast, not durable, for one process (tests, embedded use)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import time
from collections.abc import Sequence

from ssehub.events import StoredEvent, event_key
from ssehub.stores._ids import key_to_id, next_key
from ssehub.stores._local import LocalFanout
from ssehub.stores.base import ReadResult, Retention, UserRecord, UserState

_SWEEP_SECONDS = 60.0


@dataclasses.dataclass(slots=True)
class _Log:
    keys: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    events: list[StoredEvent] = dataclasses.field(default_factory=list)
    last_key: tuple[int, int] | None = None
    dropped_key: tuple[int, int] | None = None  # newest key retention has dropped

    def drop_first(self, count: int) -> None:
        if count <= 0:
            return
        self.dropped_key = self.keys[count - 1]
        del self.keys[:count], self.events[:count]


@dataclasses.dataclass(slots=True)
class _Presence:
    connections: int = 0
    last_seen: float | None = None
    cursor: str | None = None


class MemoryStore(LocalFanout):
    """Keeps logs and presence in dictionaries of this process.

    Appends are synchronous, so ids and delivery order follow call order exactly.
    Retention is applied on every append and by a sweep once a minute.
    """

    def __init__(self, *, retention: Retention | None = None) -> None:
        super().__init__(retention=retention)
        self._logs: dict[str, _Log] = {}
        self._users: dict[str, _Presence] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ssehub-memory-sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def ping(self) -> None:
        return None

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        stored: list[tuple[str, StoredEvent]] = []
        for user_id, payload in items:
            log = self._logs.get(user_id)
            if log is None:
                log = self._logs[user_id] = _Log()
            key = next_key(log.last_key)
            event = StoredEvent(key_to_id(key), payload)
            log.keys.append(key)
            log.events.append(event)
            log.last_key = key
            self._trim(log, key[0])
            stored.append((user_id, event))
        listener = self._listener
        if listener is not None:
            for user_id, event in stored:
                listener.on_event(user_id, event)
        return [event for _, event in stored]

    def _trim(self, log: _Log, now_ms: int) -> None:
        excess = len(log.keys) - self.retention.max_events
        oldest_allowed = now_ms - int(self.retention.max_age * 1000)
        expired = 0
        if log.keys and log.keys[0][0] < oldest_allowed:  # on every append: bisect only if needed
            expired = bisect.bisect_left(log.keys, (oldest_allowed, 0))
        if excess > 0 or expired:
            log.drop_first(max(excess, expired))

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        log = self._logs.get(user_id)
        if log is None:
            return ReadResult([], reset=after_id is not None)
        if after_id is None:
            return ReadResult(log.events[:limit])
        after = event_key(after_id)
        if log.last_key is None or after > log.last_key:
            return ReadResult(log.events[:limit], reset=True)
        start = bisect.bisect_right(log.keys, after)
        reset = log.dropped_key is not None and after < log.dropped_key
        return ReadResult(log.events[start : start + limit], reset=reset)

    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        presence = self._users.get(user_id)
        if presence is None:
            presence = self._users[user_id] = _Presence()
        presence.connections = connections
        presence.last_seen = time.time()
        if cursor is not None:
            presence.cursor = cursor

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        now = time.time()
        for user_id in user_ids:
            presence = self._users.get(user_id)
            if presence is not None:
                presence.last_seen = now

    def _record(self, user_id: str, presence: _Presence | None) -> UserRecord:
        log = self._logs.get(user_id)
        pending = 0
        if log is not None:
            cursor = presence.cursor if presence is not None else None
            start = bisect.bisect_right(log.keys, event_key(cursor)) if cursor else 0
            pending = len(log.keys) - start
        if presence is None:
            return UserRecord(user_id, False, 0, None, None, pending)
        if presence.connections > 0:
            pending = 0
        return UserRecord(
            user_id,
            True,
            presence.connections,
            presence.last_seen,
            presence.cursor,
            pending,
        )

    async def get_user(self, user_id: str) -> UserRecord:
        return self._record(user_id, self._users.get(user_id))

    async def list_users(
        self, *, state: UserState | None = None, after: str | None = None, limit: int = 100
    ) -> list[UserRecord]:
        records: list[UserRecord] = []
        for user_id in sorted(self._users):
            if after is not None and user_id <= after:
                continue
            record = self._record(user_id, self._users[user_id])
            if state is None or record.state is state:
                records.append(record)
                if len(records) >= limit:
                    break
        return records

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now_ms = time.time_ns() // 1_000_000
            for user_id, log in list(self._logs.items()):
                self._trim(log, now_ms)
                if not log.keys and user_id not in self._users:
                    del self._logs[user_id]
