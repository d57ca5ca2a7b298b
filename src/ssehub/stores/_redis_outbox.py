"""The Redis store's webhook outbox, shared by every node: each delivery sent by one.

Four keys of one hash-tagged family, ``{<prefix>:webhooks}:*``, so they live in one
slot (Redis Cluster runs a script only on keys of one slot):

- ``due``: a sorted set of delivery ids by the millisecond they are due;
- ``body``: a hash of id -> the JSON body;
- ``meta``: a hash of id -> ``"<attempts>:<created, Unix ms>"``;
- ``owner``: a hash of id -> the token of the claim that holds it.

A claim (one script, so atomic) takes due ids, pushes their due time a lease ahead
and records its token: no other node sees them due until the lease runs out, which is
how the claim of a node that died expires. Giving a delivery back checks the token,
so a node whose lease ran out cannot undo the claim of the node that took over.
Times are Redis's own clock (``TIME``), so nodes' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from ssehub.exceptions import StoreUnavailable
from ssehub.stores.outbox import Delivery, Outbox

if TYPE_CHECKING:
    from redis.asyncio import Redis

DEFAULT_LEASE: Final = 30.0  # seconds; far longer than one attempt (5 s) may take

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: due, body, meta. ARGV: id, body, created ms.
_PUT = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[1], '0:' .. ARGV[3])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
return 1
"""

# KEYS: due, body, meta, owner. ARGV: limit, lease ms, token.
# Returns id, body, meta for each claimed delivery.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    redis.call('HSET', KEYS[4], id, ARGV[3])
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = redis.call('HGET', KEYS[3], id) or '0:0'
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS: due, body, meta, owner. ARGV: id, token, delay ms or '' to remove, meta.
_FINISH = """
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
end
return 1
"""


class RedisOutbox(Outbox):
    """Pending deliveries in Redis, claimed by one node at a time for a lease.

    Args:
        client: the store's ``redis.asyncio.Redis`` (bytes replies).
        prefix: the store's key prefix (without the trailing colon).
        errors: the exceptions that mean Redis cannot be reached.
        lease: seconds a claim holds a delivery; longer than an attempt may take.
    """

    shared = True

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        errors: tuple[type[BaseException], ...],
        lease: float = DEFAULT_LEASE,
    ) -> None:
        family = "{" + prefix + ":webhooks}"
        self._keys = [f"{family}:due", f"{family}:body", f"{family}:meta", f"{family}:owner"]
        self._client = client
        self._errors = errors
        self._lease_ms = max(1, int(lease * 1000))
        self._put = client.register_script(_NOW_MS + _PUT)
        self._claim = client.register_script(_NOW_MS + _CLAIM)
        self._finish = client.register_script(_NOW_MS + _FINISH)

    @contextlib.asynccontextmanager
    async def _unavailable(self) -> AsyncIterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreUnavailable(f"redis: {exc or type(exc).__name__}") from exc

    async def put(self, delivery: Delivery) -> None:
        args: list[str | bytes | int] = [delivery.id, delivery.body, int(delivery.created * 1000)]
        async with self._unavailable():
            await self._put(keys=self._keys[:3], args=args)

    async def claim(self, limit: int) -> list[Delivery]:
        if limit <= 0:
            return []
        token = uuid.uuid4().hex
        async with self._unavailable():
            reply: list[Any] = await self._claim(
                keys=self._keys, args=[limit, self._lease_ms, token]
            )
        claimed: list[Delivery] = []
        for index in range(0, len(reply), 3):
            raw_id, body, meta = reply[index : index + 3]
            attempts, _, created_ms = bytes(meta).decode().partition(":")
            claimed.append(
                Delivery(
                    bytes(raw_id).decode(),
                    bytes(body),
                    int(created_ms) / 1000,
                    int(attempts),
                    claim=token,
                )
            )
        return claimed

    async def _end(self, delivery: Delivery, delay: str, meta: str) -> None:
        args = [delivery.id, delivery.claim, delay, meta]
        async with self._unavailable():
            await self._finish(keys=self._keys, args=args)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        meta = f"{delivery.attempts}:{int(delivery.created * 1000)}"
        await self._end(delivery, str(max(0, int(delay * 1000))), meta)

    async def remove(self, delivery: Delivery) -> None:
        await self._end(delivery, "", "")

    async def pending(self) -> int:
        async with self._unavailable():
            count: int = await self._client.zcard(self._keys[0])
        return count
