"""The Redis store's presence ledger: online, offline and delivery, once per cluster.

Keys, under the store's prefix ``P``, all in the hash slot of the presence log ``L``
(`_redis_keys`; so on Redis Cluster each script runs on one master):

| key | type | holds |
|---|---|---|
| ``P:{L}:o:<user>`` | hash | while online: ``n:<node>`` per node with streams, ``closed`` |
| ``P:{L}:due`` | sorted set | users whose last stream closed, scored by when the grace ends |
| ``P:{L}:nu:<node>`` | set | users with streams on the node |
| ``P:{L}:nodes`` | set | nodes that have had streams |
| ``P:{L}:ph:<node>`` | string | the node's presence heartbeat; expires with the store's presence |
| ``P:{L}:dl:<user>`` | string | newest id delivered to the user (only with the undelivered check) |

``closed`` is when the user's last stream closed (RFC 3339).

Each transition is decided and appended to the presence log in one script, so the
log's order is the order Redis decided in, and exactly one node emits each event: the
one whose script took it. A node that dies stops renewing its heartbeat; once it has
expired, the next node to look for due transitions ends the presence of the dead
node's users (``DUE``).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from ssehub.stores import _redis_scripts as scripts
from ssehub.stores._presence import (
    PRESENCE_LOG,
    USER_OFFLINE,
    USER_ONLINE,
    Emitted,
    PresenceLedger,
    rfc3339,
)
from ssehub.stores._redis_keys import tag

if TYPE_CHECKING:
    from ssehub.stores.redis import RedisStore

_CHUNK: Final = 500  # users per script call
_LOG: Final = tag(PRESENCE_LOG)

_COMMON: Final = (
    scripts._HELPERS
    + """
local p, node = ARGV[1], ARGV[2]
local maxlen, slack, sttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local log, pub = ARGV[7], ARGV[8]
local out = {}
-- The ledger's own keys: in the slot of the presence log (whose tag is `log`).
local function own(name) return p .. '{' .. log .. '}:' .. name end
local function emit(kind, user, at)
  local payload = '{"type":"' .. kind .. '","user_id":' .. cjson.encode(user)
    .. ',"at":"' .. at .. '"}'
  local id = add(p, log, payload, maxlen, slack, sttl)
  redis.call(pub, k(p, 'c', log), id .. ' ' .. payload)
  out[#out + 1] = {id, user, at}
end
local alive = {}
local function live(other)
  if alive[other] == nil then
    alive[other] = redis.call('EXISTS', own('ph:' .. other)) == 1
  end
  return alive[other]
end
-- Whether a live node has streams of the user; forgets nodes that stopped answering.
local function open_elsewhere(user, except)
  local key = own('o:' .. user)
  local found = false
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 2) == 'n:' then
      local other = string.sub(field, 3)
      if other ~= except and live(other) then
        found = true
      elseif other ~= except then
        redis.call('HDEL', key, field)
      end
    end
  end
  return found
end
"""
)

# ARGV: prefix, node, heartbeat ttl_ms, maxlen, slack, stream ttl_ms, log tag, pub,
# then (user, at) pairs. Renews the node's heartbeat; a user without P:o goes online.
OPENED: Final = (
    _COMMON
    + """
redis.call('SET', own('ph:' .. node), '1', 'PX', ARGV[3])
redis.call('SADD', own('nodes'), node)
for i = 9, #ARGV, 2 do
  local user, at = ARGV[i], ARGV[i + 1]
  redis.call('SADD', own('nu:' .. node), user)
  local key = own('o:' .. user)
  local was = redis.call('EXISTS', key)
  redis.call('HSET', key, 'n:' .. node, '1')
  if was == 0 then emit('user.online', user, at) end
end
return out
"""
)

# ARGV: prefix, node, grace, maxlen, slack, stream ttl_ms, log tag, pub, then (user,
# at) pairs.
CLOSED: Final = (
    _COMMON
    + """
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[3])
for i = 9, #ARGV, 2 do
  local user, at = ARGV[i], ARGV[i + 1]
  redis.call('SREM', own('nu:' .. node), user)
  local key = own('o:' .. user)
  if redis.call('EXISTS', key) == 1 then
    redis.call('HDEL', key, 'n:' .. node)
    redis.call('HSET', key, 'closed', at)
    redis.call('ZADD', own('due'), due, user)
  end
end
return out
"""
)

# ARGV: prefix, node, now (RFC 3339), maxlen, slack, stream ttl_ms, log tag, pub.
# Offline: users whose grace ended with no live node holding a stream of theirs, and
# users whose last streams were on nodes whose heartbeat expired.
DUE: Final = (
    _COMMON
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function offline(user, at)
  redis.call('DEL', own('o:' .. user))
  emit('user.offline', user, at)
end
for _, user in ipairs(redis.call('ZRANGEBYSCORE', own('due'), '-inf', now, 'LIMIT', 0, 500)) do
  redis.call('ZREM', own('due'), user)
  local key = own('o:' .. user)
  if redis.call('EXISTS', key) == 1 and not open_elsewhere(user, '') then
    offline(user, redis.call('HGET', key, 'closed') or ARGV[3])
  end
end
for _, other in ipairs(redis.call('SMEMBERS', own('nodes'))) do
  if not live(other) then
    for _, user in ipairs(redis.call('SMEMBERS', own('nu:' .. other))) do
      local key = own('o:' .. user)
      if redis.call('EXISTS', key) == 1 and not open_elsewhere(user, '') then
        offline(user, ARGV[3])
      end
    end
    redis.call('DEL', own('nu:' .. other))
    redis.call('SREM', own('nodes'), other)
  end
end
return out
"""
)

# ARGV: prefix, keep_ms, log tag, then (user, id) pairs. The newest delivered id only
# moves on.
DELIVERED: Final = (
    scripts._HELPERS
    + """
local p, keep, log = ARGV[1], ARGV[2], ARGV[3]
local function own(name) return p .. '{' .. log .. '}:' .. name end
for i = 4, #ARGV, 2 do
  local key = own('dl:' .. ARGV[i])
  local current = redis.call('GET', key)
  if not current or idlt(current, ARGV[i + 1]) then
    redis.call('SET', key, ARGV[i + 1], 'PX', keep)
  end
end
return 1
"""
)


def _parse_at(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class RedisLedger(PresenceLedger):
    """Presence decisions taken by Lua scripts on the store's Redis.

    Args:
        store: the Redis store (its client, prefix, node id and presence TTL).
    """

    def __init__(self, store: RedisStore) -> None:
        super().__init__(store)
        self._redis = store
        self._grace = 3.0  # as last given to `closed`
        self._log = store._keys.stream(PRESENCE_LOG)  # names the ledger's slot
        client = store._client
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("OPENED", OPENED),
                ("CLOSED", CLOSED),
                ("DUE", DUE),
                ("DELIVERED", DELIVERED),
            )
        }

    def _head(self, third: str | int) -> list[str | bytes | int]:
        prefix, maxlen, slack, stream_ttl = self._redis._append_args()
        redis = self._redis
        return [prefix, redis._node, third, maxlen, slack, stream_ttl, _LOG, redis._pub]

    def _own(self, name: str) -> str:
        """One of the ledger's keys (see the module's table)."""
        return f"{self._redis._p}{{{_LOG}}}:{name}"

    async def _run(
        self, name: str, head: list[str | bytes | int], pairs: Sequence[tuple[str, str]], kind: str
    ) -> list[Emitted]:
        emitted: list[Emitted] = []
        async with self._redis._errors_as_unavailable():
            for start in range(0, max(len(pairs), 1), _CHUNK):
                args = list(head)
                for user, text in pairs[start : start + _CHUNK]:
                    args += (user, text)
                rows = await self._scripts[name](keys=[self._log], args=args)
                emitted += (
                    Emitted(raw_id.decode(), kind, user.decode(), _parse_at(at.decode()))
                    for raw_id, user, at in rows
                )
        return emitted

    async def opened(self, opens: Sequence[tuple[str, float, str]]) -> list[Emitted]:
        pairs = [(user, text) for user, _, text in opens]
        return await self._run("OPENED", self._head(self._redis._ttl_ms()), pairs, USER_ONLINE)

    async def closed(self, closes: Sequence[tuple[str, float, str]], grace: float) -> None:
        self._grace = grace
        pairs = [(user, text) for user, _, text in closes]
        if pairs:
            await self._run("CLOSED", self._head(repr(grace)), pairs, USER_OFFLINE)

    async def due(self, grace: float) -> list[Emitted]:
        return await self._run("DUE", self._head(rfc3339(time.time())), [], USER_OFFLINE)

    async def finish(self) -> list[Emitted]:
        # Streams this node still counts end now; another node (or this one, restarted)
        # emits the offline events once the grace has passed.
        async with self._redis._errors_as_unavailable():
            members = await self._redis._client.smembers(self._own(f"nu:{self._redis._node}"))
        if members:
            text = rfc3339(time.time())
            users = [raw.decode() if isinstance(raw, bytes) else raw for raw in members]
            await self.closed([(user, 0.0, text) for user in users], self._grace)
        return []

    async def start_after(self, user_id: str) -> str | None:
        # Decided in the user's own slot, from the nodes' counts (`RedisStore`).
        return await self._redis.start_after(user_id)

    async def record_delivered(self, cursors: Mapping[str, str], keep: float) -> None:
        pairs = list(cursors.items())
        async with self._redis._errors_as_unavailable():
            for start in range(0, len(pairs), _CHUNK):
                args: list[str | int] = [self._redis._p, int(keep * 1000), _LOG]
                for user, event_id in pairs[start : start + _CHUNK]:
                    args += (user, event_id)
                await self._scripts["DELIVERED"](keys=[self._log], args=args)

    async def delivered(self, user_ids: Sequence[str]) -> list[str | None]:
        if not user_ids:
            return []
        keys = [self._own(f"dl:{user}") for user in user_ids]
        async with self._redis._errors_as_unavailable():
            found = await self._redis._client.mget(keys)
        return [raw.decode() if isinstance(raw, bytes) else raw for raw in found]
