"""An in-process store: fast, not durable, for one process (tests, embedded use)."""

from __future__ import annotations

import array
import asyncio
import bisect
import dataclasses
import time
from collections.abc import Sequence

from ssehub._tasks import cancel_and_wait
from ssehub.events import StoredEvent, event_key
from ssehub.stores._local import LocalFanout
from ssehub.stores.base import ReadResult, Retention, UserRecord, UserState
from ssehub.stores.outbox import MemoryOutbox

_SWEEP_SECONDS = 60.0


_COMPACT_AFTER = 64  # dropped entries a log holds before it is compacted

# Nothing the store keeps per event is an object the cyclic garbage collector tracks: a
# log is an array of packed keys and lists of id strings and payload bytes, presence
# plain tuples of strings and numbers. Events kept as objects (or even as tuples, which
# are tracked until a collection finds them untrackable) made every 20,000 appends a
# young collection that walked them, a pause for every stream.
_SEQ_BITS = 20  # an id's sequence number within its millisecond, in a packed key
_SEQ_LIMIT = 1 << _SEQ_BITS
_SEQ_MASK = _SEQ_LIMIT - 1
_Presence = tuple[int, float, str | None]  # (connections, last seen, cursor)


def _packed(key: tuple[int, int]) -> int:
    """``key`` as one int in the same order against every key the store gave out.

    A sequence number past the store's limit (a client's made-up id) is clamped: no
    kept key has one, so it sorts the same.
    """
    return key[0] << _SEQ_BITS | min(key[1], _SEQ_MASK)


@dataclasses.dataclass(slots=True)
class _Log:
    """One user's events; the kept ones are at ``start`` and after.

    Retention moves ``start`` and removes the dropped entries in bulk, so a full log
    costs no list shift on every append.
    """

    keys: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"))
    ids: list[str] = dataclasses.field(default_factory=list)
    payloads: list[bytes] = dataclasses.field(default_factory=list)
    start: int = 0
    last_key: tuple[int, int] | None = None
    dropped_key: tuple[int, int] | None = None  # newest key retention has dropped

    @property
    def kept(self) -> int:
        return len(self.keys) - self.start

    def oldest_ms(self) -> int:
        return self.keys[self.start] >> _SEQ_BITS

    def read(self, start: int, limit: int) -> list[StoredEvent]:
        end = start + limit
        return [
            StoredEvent(event_id, payload, (packed >> _SEQ_BITS, packed & _SEQ_MASK))
            for event_id, payload, packed in zip(
                self.ids[start:end], self.payloads[start:end], self.keys[start:end], strict=True
            )
        ]

    def drop_first(self, count: int) -> None:
        if count <= 0:
            return
        self.start += count
        packed = self.keys[self.start - 1]
        self.dropped_key = (packed >> _SEQ_BITS, packed & _SEQ_MASK)
        if self.start >= _COMPACT_AFTER and 2 * self.start >= len(self.keys):
            del self.keys[: self.start], self.ids[: self.start], self.payloads[: self.start]
            self.start = 0


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
        self._last_key: tuple[int, int] | None = None
        self._id_prefix = ""  # "<ms>-" of _last_key
        self._max_age_ms = int(self.retention.max_age * 1000)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="ssehub-memory-sweep")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None

    async def ping(self) -> None:
        return None

    def outbox(self) -> MemoryOutbox:
        """Webhook deliveries in memory: best effort, lost with the process."""
        return MemoryOutbox()

    async def append_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        listener = self._listener
        for user_id, payload in items:
            event = self._new_event(payload)
            self._append(user_id, event.key, event.id, payload)
            stored.append(event)
            if listener is not None:
                listener.on_event(user_id, event)
        return stored

    async def append_to_all(self, user_ids: Sequence[str], payload: bytes) -> int:
        # One event, one id and so one frame for every user: a broadcast costs a list
        # append and a write per user.
        event = self._new_event(payload)
        listener = self._listener
        for user_id in user_ids:
            self._append(user_id, event.key, event.id, payload)
            if listener is not None:
                listener.on_event(user_id, event)
        return len(user_ids)

    def _new_event(self, payload: bytes) -> StoredEvent:
        # Ids are "<ms>-<seq>". Keys increase across the whole store, not only per user,
        # so one key can be given to a broadcast's copies in every user's log; the time
        # part makes a restarted store's ids larger than those it gave out before, so a
        # client's old Last-Event-ID never hides new events.
        last = self._last_key
        now_ms = time.time_ns() // 1_000_000
        if last is None or now_ms > last[0]:
            key = (now_ms, 0)
            self._id_prefix = f"{now_ms}-"
        elif last[1] < _SEQ_MASK:
            key = (last[0], last[1] + 1)
        else:  # a million ids in one millisecond: the next millisecond's, early
            key = (last[0] + 1, 0)
            self._id_prefix = f"{key[0]}-"
        self._last_key = key
        return StoredEvent(self._id_prefix + str(key[1]), payload, key)

    def _append(self, user_id: str, key: tuple[int, int], event_id: str, payload: bytes) -> None:
        log = self._logs.get(user_id)
        if log is None:
            log = self._logs[user_id] = _Log()
        log.keys.append(key[0] << _SEQ_BITS | key[1])
        log.ids.append(event_id)
        log.payloads.append(payload)
        log.last_key = key
        if (
            len(log.keys) - log.start > self.retention.max_events
            or log.oldest_ms() < key[0] - self._max_age_ms
        ):
            self._trim(log, key[0])

    def _trim(self, log: _Log, now_ms: int) -> None:
        excess = log.kept - self.retention.max_events
        oldest_allowed = now_ms - self._max_age_ms
        expired = 0
        if log.kept and log.oldest_ms() < oldest_allowed:
            first_kept = _packed((oldest_allowed, 0))
            expired = bisect.bisect_left(log.keys, first_kept, lo=log.start) - log.start
        if excess > 0 or expired:
            log.drop_first(max(excess, expired))

    async def read_after(self, user_id: str, after_id: str | None, *, limit: int) -> ReadResult:
        log = self._logs.get(user_id)
        if log is None:
            return ReadResult([], reset=after_id is not None)
        first = log.start
        if after_id is None:
            return ReadResult(log.read(first, limit))
        after = event_key(after_id)
        if log.last_key is None or after > log.last_key:
            return ReadResult(log.read(first, limit), reset=True)
        start = bisect.bisect_right(log.keys, _packed(after), lo=first)
        reset = log.dropped_key is not None and after < log.dropped_key
        return ReadResult(log.read(start, limit), reset=reset)

    async def set_presence(
        self, user_id: str, *, connections: int, cursor: str | None = None
    ) -> None:
        known = self._users.get(user_id)
        if cursor is None and known is not None:
            cursor = known[2]
        self._users[user_id] = (connections, time.time(), cursor)

    async def refresh_presence(self, user_ids: Sequence[str]) -> None:
        now = time.time()
        users = self._users
        for user_id in user_ids:
            presence = users.get(user_id)
            if presence is not None:
                users[user_id] = (presence[0], now, presence[2])

    def _record(self, user_id: str, presence: _Presence | None) -> UserRecord:
        log = self._logs.get(user_id)
        pending = 0
        if log is not None:
            cursor = presence[2] if presence is not None else None
            start = log.start
            if cursor:
                start = bisect.bisect_right(log.keys, _packed(event_key(cursor)), lo=start)
            pending = len(log.keys) - start
        if presence is None:
            return UserRecord(user_id, False, 0, None, None, pending)
        connections, last_seen, cursor = presence
        return UserRecord(
            user_id, True, connections, last_seen, cursor, 0 if connections > 0 else pending
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
                if not log.kept and user_id not in self._users:
                    del self._logs[user_id]
