"""The Lua scripts of the Redis store; each runs atomically on the Redis server.

Key layout under a prefix ``P`` (``ARGV[1]`` of every script is ``"P:"``):

| key | type | holds |
|---|---|---|
| ``P:s:<user>`` | stream | the user's events, field ``p`` = payload; expires when idle |
| ``P:d:<user>`` | string | id of the newest event retention dropped (for reset) |
| ``P:c:<user>`` | channel | ``"<id> <payload>"`` of each new event |
| ``P:b`` / ``P:bc`` | stream / channel | broadcasts |
| ``P:bd:<id>`` | set | users on several nodes a broadcast was appended for (1 min) |
| ``P:ctl`` | channel | user ids to disconnect |
| ``P:n:<node>`` | channel | a node's share of a broadcast (see ``APPEND_ALL``) |
| ``P:users`` | sorted set | known users (score 0, ordered by id) |
| ``P:u:<user>`` | hash | ``seen`` (Unix time), ``cursor`` (last delivered id) |
| ``P:p:<user>`` | hash | node id -> open streams of the user on that node |
| ``P:node:<node>`` | string | a node's heartbeat; expires unless the node refreshes it |

Key names are built inside the scripts, so the store runs on one Redis server (with
replicas or Sentinel), not on Redis Cluster.
"""

from __future__ import annotations

from typing import Final

# Ids are "ms-seq". Redis numbers in Lua are doubles: exact for the 13-digit
# millisecond part; a clamped 20-digit id still compares as larger than any real one.
_HELPERS: Final = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function idlt(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am < bm end
  return as < bs
end
local function succ(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Drop events beyond maxlen, and those older than max_age_ms (if > 0); remember the
-- newest dropped id, so a reader after an older id learns it missed something.
local function trim(p, user, maxlen, max_age_ms, ttl)
  local stream = p .. 's:' .. user
  local newest = false
  local len = redis.call('XLEN', stream)
  if len > maxlen then
    local victims = redis.call('XRANGE', stream, '-', '+', 'COUNT', len - maxlen)
    newest = victims[#victims][1]
  end
  local cutoff_ms = now_ms() - max_age_ms
  if max_age_ms > 0 and cutoff_ms > 0 then
    local cutoff = string.format('%.0f', cutoff_ms) .. '-0'
    local old = redis.call('XREVRANGE', stream, '(' .. cutoff, '-', 'COUNT', 1)
    if #old > 0 and (not newest or idlt(newest, old[1][1])) then newest = old[1][1] end
  end
  if newest then
    redis.call('XTRIM', stream, 'MINID', succ(newest))
    redis.call('SET', p .. 'd:' .. user, newest, 'PX', ttl)
  end
end
-- Whether this is the first copy of a broadcast for a user (on several nodes, each
-- node appends a broadcast for the user: only the first does).
local function first_copy(p, broadcast, user)
  local fresh = redis.call('SADD', p .. 'bd:' .. broadcast, user) == 1
  redis.call('PEXPIRE', p .. 'bd:' .. broadcast, 60000)
  return fresh
end
-- Append a payload to a user's stream, trimming in steps of `slack`; return its id.
local function add(p, user, payload, maxlen, slack, ttl)
  local stream = p .. 's:' .. user
  local id = redis.call('XADD', stream, '*', 'p', payload)
  if redis.call('XLEN', stream) > maxlen + slack then trim(p, user, maxlen, 0, ttl) end
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', p .. 'd:' .. user, ttl)
  return id
end
"""

# ARGV: prefix, maxlen, slack, ttl_ms, then user, payload, broadcast id triples. Returns
# the ids (false for a skipped item). XADD and PUBLISH in one script: subscribers see a
# user's events in id order. A broadcast (id not '') is appended once per user, however
# many nodes with streams of the user append it.
APPEND: Final = (
    _HELPERS
    + """
local p, maxlen, slack, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local ids = {}
for i = 5, #ARGV, 3 do
  local user, payload, broadcast = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local fresh = true
  -- Only a user with streams on several nodes needs the check (and its memory).
  if broadcast ~= '' and redis.call('HLEN', p .. 'p:' .. user) > 1 then
    fresh = first_copy(p, broadcast, user)
  end
  if fresh then
    local id = add(p, user, payload, maxlen, slack, ttl)
    redis.call('PUBLISH', p .. 'c:' .. user, id .. ' ' .. payload)
    ids[#ids + 1] = id
  else
    ids[#ids + 1] = false
  end
end
return ids
"""
)

# ARGV: prefix, maxlen, slack, ttl_ms, node channel, broadcast id, payload, then the
# users (this node's). The node's share is "<count>\n", count lines "<id> <user>", then
# the payload. Appends a broadcast for each user, at most once per user however
# many nodes append it (as APPEND). A user with streams on this node only is not told on
# its own channel: one message on the node's channel lists all of them (ids and users)
# with the payload once; published in the same script, it keeps each user's id order
# for this node's subscriber. Returns the number of events appended.
APPEND_ALL: Final = (
    _HELPERS
    + """
local p, maxlen, slack, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local node_channel, broadcast, payload = ARGV[5], ARGV[6], ARGV[7]
local lines = {}
local appended = 0
for i = 8, #ARGV do
  local user = ARGV[i]
  local shared = redis.call('HLEN', p .. 'p:' .. user) > 1
  if not (broadcast ~= '' and shared) or first_copy(p, broadcast, user) then
    local id = add(p, user, payload, maxlen, slack, ttl)
    if shared then
      redis.call('PUBLISH', p .. 'c:' .. user, id .. ' ' .. payload)
    else
      lines[#lines + 1] = id .. ' ' .. user
    end
    appended = appended + 1
  end
end
if #lines > 0 then
  local share = #lines .. '\\n' .. table.concat(lines, '\\n') .. '\\n' .. payload
  redis.call('PUBLISH', node_channel, share)
end
return appended
"""
)

# ARGV: prefix, maxlen, payload. Returns the broadcast's id.
BROADCAST: Final = """
local p = ARGV[1]
local id = redis.call('XADD', p .. 'b', 'MAXLEN', '~', ARGV[2], '*', 'p', ARGV[3])
redis.call('PUBLISH', p .. 'bc', id .. ' ' .. ARGV[3])
return id
"""

# ARGV: prefix, user, after ('' for none), limit, maxlen, max_age_ms, ttl_ms.
# Returns {reset, rows}: reset 1 when events after `after` were dropped, or `after` is
# beyond the newest id given out (then rows start from the oldest kept event).
READ: Final = (
    _HELPERS
    + """
local p, user, after, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stream = p .. 's:' .. user
if redis.call('EXISTS', stream) == 0 then
  if after == '' then return {0, {}} end
  return {1, {}}
end
trim(p, user, tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
if after == '' then return {0, redis.call('XRANGE', stream, '-', '+', 'COUNT', limit)} end
local dropped = redis.call('GET', p .. 'd:' .. user)
local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local last = dropped
if #newest > 0 then last = newest[1][1] end
if not last or idlt(last, after) then
  return {1, redis.call('XRANGE', stream, '-', '+', 'COUNT', limit)}
end
local reset = 0
if dropped and idlt(after, dropped) then reset = 1 end
return {reset, redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', limit)}
"""
)

# ARGV: prefix, user, node, count, now, cursor ('' to keep), ttl_ms.
# The cursor only moves forward, whichever node writes last.
SET_PRESENCE: Final = (
    _HELPERS
    + """
local p, user, node, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('SET', p .. 'node:' .. node, '1', 'PX', ARGV[7])
if count > 0 then
  redis.call('HSET', p .. 'p:' .. user, node, count)
else
  redis.call('HDEL', p .. 'p:' .. user, node)
end
redis.call('HSET', p .. 'u:' .. user, 'seen', ARGV[5])
local cursor = ARGV[6]
if cursor ~= '' then
  local current = redis.call('HGET', p .. 'u:' .. user, 'cursor')
  if not current or idlt(current, cursor) then
    redis.call('HSET', p .. 'u:' .. user, 'cursor', cursor)
  end
end
redis.call('ZADD', p .. 'users', 0, user)
return 1
"""
)

# ARGV: prefix, node, ttl_ms, now, then user, count pairs. Renews the node's heartbeat
# and rewrites its counts, so presence heals by itself after Redis lost its data.
REFRESH: Final = """
local p, node = ARGV[1], ARGV[2]
redis.call('SET', p .. 'node:' .. node, '1', 'PX', ARGV[3])
for i = 5, #ARGV, 2 do
  local user, count = ARGV[i], tonumber(ARGV[i + 1])
  if count > 0 then redis.call('HSET', p .. 'p:' .. user, node, count) end
  redis.call('HSET', p .. 'u:' .. user, 'seen', ARGV[4])
  redis.call('ZADD', p .. 'users', 0, user)
end
return 1
"""

# ARGV: prefix, maxlen, max_age_ms, ttl_ms, mode, then
#   mode 'get': user
#   mode 'list': after ('' for none), limit, state ('' | 'connected' | 'disconnected')
# Returns {records, next}: records are {user, known, connections, seen, cursor, pending};
# a list scans at most 1,000 users per call (so one call never blocks Redis for long)
# and `next` is the user to continue after, or false at the end. Counts of nodes whose
# heartbeat expired are removed on the way.
USERS: Final = (
    _HELPERS
    + """
local p, maxlen, max_age_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local alive = {}
local function connections(user)
  local key = p .. 'p:' .. user
  local counts = redis.call('HGETALL', key)
  local total = 0
  for i = 1, #counts, 2 do
    local node = counts[i]
    if alive[node] == nil then
      alive[node] = redis.call('EXISTS', p .. 'node:' .. node) == 1
    end
    if alive[node] then
      total = total + tonumber(counts[i + 1])
    else
      redis.call('HDEL', key, node)
    end
  end
  return total
end
local function record(user, conns)
  local known = 0
  if redis.call('ZSCORE', p .. 'users', user) then known = 1 end
  local u = redis.call('HMGET', p .. 'u:' .. user, 'seen', 'cursor')
  local pending = 0
  local stream = p .. 's:' .. user
  if conns == 0 and redis.call('EXISTS', stream) == 1 then
    trim(p, user, maxlen, max_age_ms, ttl)
    if u[2] then
      pending = #redis.call('XRANGE', stream, '(' .. u[2], '+')
    else
      pending = redis.call('XLEN', stream)
    end
  end
  return {user, known, conns, u[1], u[2], pending}
end
if ARGV[5] == 'get' then
  local user = ARGV[6]
  return {{record(user, connections(user))}, false}
end
local after, limit, state = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local out = {}
local start = '-'
if after ~= '' then start = '(' .. after end
local batch = redis.call('ZRANGEBYLEX', p .. 'users', start, '+', 'LIMIT', 0, 1000)
for i, user in ipairs(batch) do
  local conns = connections(user)
  local st = 'disconnected'
  if conns > 0 then st = 'connected' end
  if state == '' or state == st then
    out[#out + 1] = record(user, conns)
    if #out >= limit then return {out, user} end
  end
end
if #batch < 1000 then return {out, false} end
return {out, batch[#batch]}
"""
)
