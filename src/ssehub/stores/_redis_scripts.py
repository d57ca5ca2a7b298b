"""The Lua scripts of the Redis stores; each runs atomically on one Redis master.

Key names are in `_redis_keys` (the table there). Every script declares, as
``KEYS[1]``, one key in the hash slot of everything it touches, so Redis Cluster
routes it to the master that owns the slot (and answers ``MOVED``/``ASK`` while the
slot moves); names of the other keys of that slot are built from the hash tags the
script is given. The presence scripts declare every key they write instead (see
``RedisStore._presence_keys``): a presence written through ``ASK`` while its slot
moves must not leave a second copy behind. ``OPEN`` and ``NEWEST`` serve many users
of one slot in one call: they declare each user's stream, and take each user's tag
from its stream's name, so a call passes at most one value per user.
``ARGV[1]`` of every per-user script is the prefix with its colon.
``pub`` is ``PUBLISH`` on one server and ``SPUBLISH`` (sharded) on a cluster.
"""

from __future__ import annotations

from typing import Final

# Ids are "ms-seq". Redis numbers in Lua are doubles: exact for the 13-digit
# millisecond part; a clamped 20-digit id still compares as larger than any real one.
_HELPERS: Final = """
local function k(p, kind, t) return p .. kind .. ':{' .. t .. '}' end
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
local function trim(p, t, maxlen, max_age_ms, ttl)
  local stream = k(p, 's', t)
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
    redis.call('SET', k(p, 'd', t), newest, 'PX', ttl)
  end
end
-- Up to `limit` events after `after` ('' for the oldest kept), trimmed first to what
-- retention keeps; reset 1 when events after `after` were dropped, or `after` is
-- beyond the newest id given out (then from the oldest kept event).
local function read_page(p, t, after, limit, maxlen, max_age_ms, ttl)
  local stream = k(p, 's', t)
  if redis.call('EXISTS', stream) == 0 then
    if after == '' then return 0, {} end
    return 1, {}
  end
  trim(p, t, maxlen, max_age_ms, ttl)
  if after == '' then return 0, redis.call('XRANGE', stream, '-', '+', 'COUNT', limit) end
  local dropped = redis.call('GET', k(p, 'd', t))
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local last = dropped
  if #newest > 0 then last = newest[1][1] end
  if not last or idlt(last, after) then
    return 1, redis.call('XRANGE', stream, '-', '+', 'COUNT', limit)
  end
  local reset = 0
  if dropped and idlt(after, dropped) then reset = 1 end
  return reset, redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', limit)
end
-- Whether this is the first copy of a broadcast for a user (on several nodes, each
-- node appends a broadcast for the user: only the first does).
local function first_copy(p, broadcast, t)
  local seen = k(p, 'bd', t)
  local fresh = redis.call('SADD', seen, broadcast) == 1
  redis.call('PEXPIRE', seen, 60000)
  return fresh
end
-- Append a payload to a user's stream, trimming in steps of `slack`; return its id:
-- `at` if given and above the stream's newest id, else one Redis makes.
local function add(p, t, payload, maxlen, slack, ttl, at)
  local stream = k(p, 's', t)
  local id = at and redis.pcall('XADD', stream, at, 'p', payload)
  if not id or type(id) == 'table' then
    id = redis.call('XADD', stream, '*', 'p', payload)
  end
  if redis.call('XLEN', stream) > maxlen + slack then trim(p, t, maxlen, 0, ttl) end
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', k(p, 'd', t), ttl)
  return id
end
-- An idempotency record: nil when absent, the recorded answer when the same request
-- (fingerprint) ran already, an error when another request used the key.
local function recorded(record, fingerprint)
  if record == '' then return nil end
  local found = redis.call('GET', record)
  if not found then return nil end
  local entry = cjson.decode(found)
  if entry[1] ~= fingerprint then
    return redis.error_reply('IDEMPOTENCY key already used for another request')
  end
  return entry[2]
end
local function record_answer(record, fingerprint, answer, ttl)
  if record ~= '' then
    redis.call('SET', record, cjson.encode({fingerprint, answer}), 'PX', ttl)
  end
end
"""

# KEYS[1]: a key in the slot of every user of the call. ARGV: prefix, maxlen, slack,
# ttl_ms, pub, record ('' for none), fingerprint, record ttl_ms, then tag, payload,
# broadcast id triples. Returns the ids (false for a skipped item). XADD and PUBLISH in
# one script: subscribers see a user's events in id order. A broadcast (id not '') is
# appended once per user, however many nodes with streams of the user append it. With
# a record, a repeated call answers the first one's ids and appends nothing.
APPEND: Final = (
    _HELPERS
    + """
local p, maxlen, slack, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local pub, record, fingerprint = ARGV[5], ARGV[6], ARGV[7]
local before = recorded(record, fingerprint)
if before then return before end
local ids = {}
for i = 9, #ARGV, 3 do
  local t, payload, broadcast = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local fresh = true
  -- Only a user with streams on several nodes needs the check (and its memory).
  if broadcast ~= '' and redis.call('HLEN', k(p, 'p', t)) > 1 then
    fresh = first_copy(p, broadcast, t)
  end
  if fresh then
    local id = add(p, t, payload, maxlen, slack, ttl)
    redis.call(pub, k(p, 'c', t), id .. ' ' .. payload)
    ids[#ids + 1] = id
  else
    ids[#ids + 1] = false
  end
end
record_answer(record, fingerprint, ids, ARGV[8])
return ids
"""
)

# KEYS[1]: as APPEND. ARGV: prefix, maxlen, slack, ttl_ms, pub, node channel ('' to
# tell each user on its own channel), broadcast id, payload, then user, tag pairs (this
# node's users). Appends a broadcast for each user, at most once per user however many
# nodes append it (as APPEND). Every copy takes one shared id where the user's stream
# allows it (its newest id is below), so the frame is built once for them all.
# A user with streams on this node only is not told on its own channel: one message on
# the node's channel, "<count> <shared id>\\n", count lines "<id> <user>" (the id left
# empty where it is the shared one), then the payload, lists all of them; published in
# the same script, it keeps each user's id order for this node's subscriber. Returns
# the number of events appended.
APPEND_ALL: Final = (
    _HELPERS
    + """
local p, maxlen, slack, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local pub, node_channel, broadcast, payload = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local lines = {}
local appended = 0
-- This millisecond with a sequence no stream reaches in one: above every user's
-- newest id unless ids ran ahead of the clock.
local now = redis.call('TIME')
local shared_id = now[1] .. string.format('%06d', tonumber(now[2])):sub(1, 3) .. '-1000000'
for i = 9, #ARGV, 2 do
  local user, t = ARGV[i], ARGV[i + 1]
  local shared = redis.call('HLEN', k(p, 'p', t)) > 1
  if not (broadcast ~= '' and shared) or first_copy(p, broadcast, t) then
    local id = add(p, t, payload, maxlen, slack, ttl, shared_id)
    if shared or node_channel == '' then
      redis.call(pub, k(p, 'c', t), id .. ' ' .. payload)
    elseif id == shared_id then
      lines[#lines + 1] = ' ' .. user
    else
      lines[#lines + 1] = id .. ' ' .. user
    end
    appended = appended + 1
  end
end
if #lines > 0 then
  local head = #lines .. ' ' .. shared_id .. '\\n'
  redis.call(pub, node_channel, head .. table.concat(lines, '\\n') .. '\\n' .. payload)
end
return appended
"""
)

# KEYS[1]: the broadcast stream. ARGV: maxlen, payload, channel, pub, record,
# fingerprint, record ttl_ms. Returns the broadcast's id (the first one's, repeated).
BROADCAST: Final = (
    _HELPERS
    + """
local record, fingerprint = ARGV[5], ARGV[6]
local before = recorded(record, fingerprint)
if before then return before end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', ARGV[2])
redis.call(ARGV[4], ARGV[3], id .. ' ' .. ARGV[2])
record_answer(record, fingerprint, id, ARGV[7])
return id
"""
)

# KEYS[1]: the user's stream. ARGV: prefix, tag, after ('' for none), limit, maxlen,
# max_age_ms, ttl_ms. Returns {reset, rows}: reset 1 when events after `after` were
# dropped, or `after` is beyond the newest id given out (then rows start from the
# oldest kept event).
READ: Final = (
    _HELPERS
    + """
local reset, rows = read_page(
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7])
return {reset, rows}
"""
)

# KEYS: the streams of the users of the call (one slot on a cluster; a user may come
# twice). ARGV: prefix, node, maxlen, max_age_ms, ttl_ms, then one limit per key. Where
# a stream of each user starts when this node has none of its streams: after the
# user's newest event if a stream is open on another node (its count there has not
# missed its deadline), else after the user's cursor. Returns, per key, {start (false
# for none), reset, rows}: with a limit above 0, the first page after the start, as
# READ gives it (so opening a stream costs one round trip, not three). The tag of each
# user is taken from its key, so the call passes one value per user.
OPEN: Final = (
    _HELPERS
    + """
local p, node = ARGV[1], ARGV[2]
local maxlen, max_age_ms, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local out = {}
for i, stream in ipairs(KEYS) do
  local t = string.sub(stream, #p + 4, -2)
  local limit = tonumber(ARGV[5 + i])
  local counts = redis.call('HGETALL', k(p, 'p', t))
  local start = false
  for j = 1, #counts, 2 do
    if counts[j] ~= node then
      local count, deadline = string.match(counts[j + 1], '^(%d+) (%d+)$')
      if deadline and tonumber(deadline) > now and tonumber(count) > 0 then
        local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
        if #newest > 0 then start = newest[1][1] end
        break
      end
    end
  end
  if not start then start = redis.call('HGET', k(p, 'u', t), 'cursor') end
  if limit == 0 then
    out[i] = {start, 0, {}}
  else
    local reset, rows = read_page(p, t, start or '', limit, maxlen, max_age_ms, ttl)
    out[i] = {start, reset, rows}
  end
end
return out
"""
)

# KEYS: the streams of the users of the call (one slot on a cluster). Returns the id of
# each stream's newest event (false for an empty or missing stream).
NEWEST: Final = """
local out = {}
for i, stream in ipairs(KEYS) do
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #newest > 0 then out[i] = newest[1][1] else out[i] = false end
end
return out
"""

# KEYS: the presence keys (p, u) of every user of the call, which it writes. ARGV:
# prefix, node, now, ttl_ms, then tag, count, cursor ('' to keep) triples. A node's
# count holds until its deadline (now + ttl), renewed by REFRESH, so the streams of a
# node killed with -9 stop counting on their own. The cursor only moves forward,
# whichever node writes last.
SET_PRESENCE: Final = (
    _HELPERS
    + """
local p, node, seen = ARGV[1], ARGV[2], ARGV[3]
local deadline = string.format('%.0f', now_ms() + tonumber(ARGV[4]))
for i = 5, #ARGV, 3 do
  local t, count, cursor = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if count > 0 then
    redis.call('HSET', k(p, 'p', t), node, count .. ' ' .. deadline)
  else
    redis.call('HDEL', k(p, 'p', t), node)
  end
  local u = k(p, 'u', t)
  redis.call('HSET', u, 'seen', seen)
  if cursor ~= '' then
    local current = redis.call('HGET', u, 'cursor')
    if not current or idlt(current, cursor) then redis.call('HSET', u, 'cursor', cursor) end
  end
end
return 1
"""
)

# KEYS: the presence keys (p, u) of every user of the call, which it writes. ARGV:
# prefix, node, ttl_ms, now, then tag, count pairs. Renews the node's deadlines and
# rewrites its counts, so presence heals by itself after Redis lost its data.
REFRESH: Final = (
    _HELPERS
    + """
local p, node = ARGV[1], ARGV[2]
local deadline = string.format('%.0f', now_ms() + tonumber(ARGV[3]))
for i = 5, #ARGV, 2 do
  local t, count = ARGV[i], tonumber(ARGV[i + 1])
  if count > 0 then redis.call('HSET', k(p, 'p', t), node, count .. ' ' .. deadline) end
  redis.call('HSET', k(p, 'u', t), 'seen', ARGV[4])
end
return 1
"""
)

# KEYS[1]: the user's stream. ARGV: prefix, maxlen, max_age_ms, ttl_ms, user, tag.
# Returns {user, known, connections, seen, cursor, pending}. Counts whose node missed
# its deadline are removed on the way.
USER: Final = (
    _HELPERS
    + """
local p, maxlen, max_age_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local user, t = ARGV[5], ARGV[6]
local key = k(p, 'p', t)
local counts = redis.call('HGETALL', key)
local now = now_ms()
local conns = 0
for i = 1, #counts, 2 do
  local count, deadline = string.match(counts[i + 1], '^(%d+) (%d+)$')
  if deadline and tonumber(deadline) > now then
    conns = conns + tonumber(count)
  else
    redis.call('HDEL', key, counts[i])
  end
end
local u = redis.call('HMGET', k(p, 'u', t), 'seen', 'cursor')
local known = 0
if u[1] then known = 1 end
local pending = 0
local stream = k(p, 's', t)
if conns == 0 and redis.call('EXISTS', stream) == 1 then
  trim(p, t, maxlen, max_age_ms, ttl)
  if u[2] then
    pending = #redis.call('XRANGE', stream, '(' .. u[2], '+')
  else
    pending = redis.call('XLEN', stream)
  end
end
return {user, known, conns, u[1], u[2], pending}
"""
)
