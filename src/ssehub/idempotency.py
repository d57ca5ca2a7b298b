"""Safe retries of a publish: the ``Idempotency-Key`` header.

A publish repeated with the same key, for the same request (route, target and body),
answers what the first one answered and delivers nothing twice; the same key with
another request is refused (`IdempotencyKeyReused`, HTTP 409). Every publish route goes
through one `Idempotency` layer, over whatever store the hub has:

- A store that records idempotency itself (`IdempotentStore`, the Redis stores) sees
  the request through `current()` while it appends, and keeps the record atomically
  with the append, in the same script. So a publish that Redis applied but whose
  answer was lost (a ``503`` during a failover), retried with its key, answers the
  first ids and appends nothing.
- For any other store (memory, SQLite: one process), the layer keeps the answers in
  this process, for the history's lifetime (``max_age``) and at most ``max_records``,
  and runs the requests of one key one at a time.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import orjson

from ssehub.exceptions import IdempotencyKeyReused, InvalidInput

__all__ = [
    "HEADER",
    "Idempotency",
    "IdempotencyKeyReused",
    "IdempotentStore",
    "Intent",
    "current",
]

#: The request header that carries the key.
HEADER: Final = "idempotency-key"
_MAX_KEY_LENGTH: Final = 255

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Intent:
    """The request a publish belongs to.

    Attributes:
        key: the client's ``Idempotency-Key``.
        fingerprint: a digest of the route, its target and the body: the same for the
            same request, different for any other.
    """

    key: str
    fingerprint: str


_current: contextvars.ContextVar[Intent | None] = contextvars.ContextVar(
    "ssehub_idempotency", default=None
)


def current() -> Intent | None:
    """The intent of the publish running in this task, or None without a key."""
    return _current.get()


@runtime_checkable
class IdempotentStore(Protocol):
    """A store that keeps idempotency records itself, atomically with its appends.

    While an intent is `current`, its ``append_many`` and ``publish_broadcast``
    record what they did under the intent's key, answer a repeat with the first
    answer (appending nothing), and raise `IdempotencyKeyReused` for another request
    with the same key.
    """

    idempotent_appends: bool


def check_key(key: str) -> str:
    """Return a key if it is acceptable: 1 to 255 printable ASCII characters.

    Raises:
        InvalidInput: empty, too long, or holding other characters.
    """
    if not key or len(key) > _MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {_MAX_KEY_LENGTH} printable ASCII characters"
        )
    return key


def fingerprint(scope: str, body: Any) -> str:
    """A digest of a request: its scope (route and target) and its JSON body.

    The body is digested in a canonical form (sorted keys, compact), so the same
    content sent with other spacing or key order is the same request.
    """
    digest = hashlib.sha256(scope.encode())
    digest.update(b"\n")
    digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


class Idempotency:
    """The one idempotency layer of the publish routes.

    Args:
        store: the hub's store; if it is an `IdempotentStore`, it keeps the records.
        ttl: seconds an answer is kept, at least the history's lifetime.
        max_records: answers kept in this process (oldest dropped first), for a store
            that does not keep them itself.
    """

    def __init__(self, store: object, *, ttl: float, max_records: int = 100_000) -> None:
        self._native = isinstance(store, IdempotentStore) and store.idempotent_appends
        self._ttl = ttl
        self._max_records = max_records
        # key -> (fingerprint, answer, expires at): least recently stored first.
        self._records: OrderedDict[str, tuple[str, Any, float]] = OrderedDict()
        # key -> its lock and how many requests hold or wait for it.
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def run(
        self, key: str | None, scope: str, body: Any, publish: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``publish`` once per key; a repeat answers the first answer.

        Args:
            key: the request's ``Idempotency-Key``, or None (then ``publish`` just runs).
            scope: the route and its target (``"user alice"``, ``"batch"``...).
            body: the parsed JSON body.
            publish: appends and returns the answer (kept for repeats).

        Raises:
            InvalidInput: a malformed key.
            IdempotencyKeyReused: the key was used for another request.
        """
        if key is None:
            return await publish()
        intent = Intent(check_key(key), fingerprint(scope, body))
        if self._native:
            token = _current.set(intent)
            try:
                return await publish()
            finally:
                _current.reset(token)
        lock, users = self._locks.setdefault(intent.key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:  # a concurrent repeat waits for the first answer
                found = self._recall(intent)
                if found is not None:
                    answer: T = found[0]
                    return answer
                answer = await publish()
                self._remember(intent, answer)
                return answer
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[intent.key]

    def _recall(self, intent: Intent) -> tuple[Any] | None:
        now = time.monotonic()
        while self._records:  # drop the expired ones, oldest first
            oldest = next(iter(self._records.values()))
            if oldest[2] > now:
                break
            self._records.popitem(last=False)
        record = self._records.get(intent.key)
        if record is None:
            return None
        if record[0] != intent.fingerprint:
            raise IdempotencyKeyReused
        return (record[1],)

    def _remember(self, intent: Intent, answer: Any) -> None:
        self._records[intent.key] = (intent.fingerprint, answer, time.monotonic() + self._ttl)
        self._records.move_to_end(intent.key)
        while len(self._records) > self._max_records:
            self._records.popitem(last=False)
