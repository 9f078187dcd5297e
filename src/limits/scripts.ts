import { COUNTER_TTL_MS } from './counter-expiry.js'
import { DEFAULT_THRESHOLDS } from './policy.js'

// The admission decision and its settlement, each one Redis round trip (DESIGN.md, request path step 3).
// KEYS[1] is the workspace prefix `tmt:{ws:<id>}`; every key the scripts touch starts with it, so they all live
// in one hash slot and the scripts run unchanged on Redis Cluster. Time is Redis' own (TIME), never a replica's.
//
// Key layout under a scope prefix P (the workspace, a token, or a model within the workspace):
//   P:rpm        ZSET  request id → admitted at (ms)              exact sliding minute
//   P:rpd        HASH  hour index → requests                      25 hourly buckets: a day, counted generously
//   P:tpm        HASH  second index → tokens                      61 one-second buckets: a minute, likewise
//                both also: -1 → the window's first bucket, -2 → the window's sum, -3 → the last bucket as the sum
//                knows it (window() in ADMIT_SCRIPT)
//   P:conc       ZSET  request id → lease expiry (ms)             a lease a crashed replica cannot keep
//   P:conc:ms    STRING  how long a call usually holds its slot     moving average, for a concurrency Retry-After
//   P:spend:<d|m|l>[:<period id>]  HASH settled, reserved, t<pct>  micro-units of the workspace currency; t<pct>:
//                                       when pct % of the cap was first recorded as crossed in the period: by the
//                                       settlement or the refusal that found settled spend at or past it
//                                       v:<request id>  cost of a call that settled while the counter was missing
//                a day's or a month's expires some days after its first write (counter-expiry.ts); a lifetime's stays
// and per workspace: resv (ZSET request id → expiry), resv:data (HASH request id → what it holds), done (ZSET),
// epoch (set when the workspace is created and by each seed: its absence means its state is lost), recovery (when the
// replicas were first asked to put back what they hold, after a loss).

// a spend counter's first write (a seed, a vouch, a reservation put back) gives a day's or a month's its expiry
const EXPIRE_COUNTER = `
local function expireCounter (key)
  if redis.call('PTTL', key) ~= -1 then return end
  if string.find(key, ':spend:d:', 1, true) then redis.call('PEXPIRE', key, ${COUNTER_TTL_MS.day})
  elseif string.find(key, ':spend:m:', 1, true) then redis.call('PEXPIRE', key, ${COUNTER_TTL_MS.month}) end
end
`

const COMMON = `
local prefix = KEYS[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local RESV, RESV_DATA, DONE = prefix .. ':resv', prefix .. ':resv:data', prefix .. ':done'
-- the fields where a bucket hash keeps its window's first bucket and sum: numbers below every bucket index, so that a
-- prune of the buckets that left the window (an older version of these scripts' too) drops them with those, and the
-- next admission works the sum out again
local FROM, SUM, SEEN = '-1', '-2', '-3'

-- gives back what a reservation holds: its concurrency leases, and its reserved spend but on the counters in
-- 'settling', which the caller writes itself; returns what it held
local function release (id, settling)
  local raw = redis.call('HGET', RESV_DATA, id)
  local held = raw and cjson.decode(raw)
  if held then
    for _, key in ipairs(held.spend) do
      if not (settling and settling[key]) and redis.call('EXISTS', key) == 1 then
        redis.call('HINCRBY', key, 'reserved', -held.cost)
      end
    end
    for _, key in ipairs(held.conc) do redis.call('ZREM', key, id) end
    redis.call('HDEL', RESV_DATA, id)
  end
  redis.call('ZREM', RESV, id)
  return held
end
`

export const ADMIT_SCRIPT = COMMON + `
local a = cjson.decode(ARGV[1])

-- the replica computed the calendar periods from its own clock: they must hold Redis' now
if a.day and (now < a.day.s or now >= a.day.e or now < a.month.s or now >= a.month.e) then return {3, now} end

-- reservations of calls whose replica died expire here, on the next admission of the workspace
for _, id in ipairs(redis.call('ZRANGEBYSCORE', RESV, '-inf', now, 'LIMIT', 0, 100)) do release(id) end

-- every cap of every scope, its counter read once: {scope index, kind, cap, key, settled, reserved}
local caps = {}
local CAP_KINDS = {'d', 'm', 'l'}
-- a spend counter missing from Redis (restart, eviction, FLUSHALL) is seeded from the ledger before any decision
local missing = {}
-- in the order d, m, l, as the gateway and memory-store.ts list them: a JSON object's pairs() come in hash order, and
-- a refusal's crossings would be reported in another order than a settlement's
for i, scope in ipairs(a.scopes) do
  local scopeCaps = scope.caps or {}
  for _, kind in ipairs(CAP_KINDS) do
    local cap = scopeCaps[kind]
    if cap then
      local key = scope.p .. ':spend:l'
      if kind == 'd' then key = scope.p .. ':spend:d:' .. a.day.id end
      if kind == 'm' then key = scope.p .. ':spend:m:' .. a.month.id end
      local values = redis.call('HMGET', key, 'settled', 'reserved')
      if not values[1] then table.insert(missing, {i, kind, key}) end
      table.insert(caps, {i, kind, cap, key, tonumber(values[1]) or 0, tonumber(values[2]) or 0})
    end
  end
end
if #missing > 0 then
  -- nothing of the workspace is here: lost (FLUSHALL, restart, failover) or new. The room held by calls in flight on
  -- every replica is gone with it; they get a.quiet ms to put it back (renew) and to write what they settled, and
  -- only then is the ledger read. The first to see the loss starts the clock for all.
  if a.quiet and redis.call('EXISTS', prefix .. ':epoch') == 0 then
    redis.call('SET', prefix .. ':recovery', now, 'NX', 'PX', a.quiet * 20)
    local since = tonumber(redis.call('GET', prefix .. ':recovery'))
    if now < since + a.quiet then return {2, cjson.encode(missing), since, since + a.quiet - now} end
  end
  return {2, cjson.encode(missing)}
end

local MINUTE, HOUR = 60000, 3600000
local second, hour = math.floor(now / 1000), math.floor(now / HOUR)

-- The sum of buckets [last - span, last], and bucket last. A hash of this size is a listpack, where reading a field
-- scans it: a read of every bucket of the window costs a scan per bucket. So the hash keeps the window's sum, which
-- every write to a bucket of the window adds to, and the first call of each bucket works it out again, dropping the
-- buckets that left the window (a busy hash never idles long enough to expire). The sum is trusted only while bucket
-- last is what it knows: a replica of an older version adds to that bucket alone (during a rolling upgrade)
local function window (key, last, span)
  local from = last - span
  local values = redis.call('HMGET', key, FROM, SUM, SEEN, last)
  if tonumber(values[1]) == from and values[2] and tonumber(values[3]) == (tonumber(values[4]) or 0) then
    return tonumber(values[2]), values[4]
  end
  local total, stale, kept = 0, {}, 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local b = tonumber(fields[i])
    if b < from then
      table.insert(stale, fields[i])
    else
      kept = kept + 1
      if b <= last then total = total + tonumber(fields[i + 1]) end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  -- kept for the calls after this one (a workspace denied for a whole second would add it up on every call); only
  -- in a hash that still holds buckets, which has its expiry
  if kept > 0 then redis.call('HSET', key, FROM, from, SUM, total, SEEN, tonumber(values[4]) or 0) end
  return total, values[4]
end

-- when enough of the window's oldest buckets leave it to fit 'need' more
local function fitsAt (key, last, span, width, total, limit, need)
  local fields = {}
  for b = last - span, last do table.insert(fields, b) end
  local freed, at = 0, now
  for i, v in ipairs(redis.call('HMGET', key, unpack(fields))) do
    freed = freed + (tonumber(v) or 0)
    -- bucket (last - span + i - 1) leaves the window when now passes its end by the window's length
    at = (last + i) * width
    if total - freed + need <= limit then break end
  end
  return at
end

-- adds n to bucket last of a window read by window()
local function add (key, last, span, n, total, bucket, ttl)
  local value = (tonumber(bucket) or 0) + n
  redis.call('HSET', key, last, value, FROM, last - span, SUM, total + n, SEEN, value)
  -- the first call of a bucket makes the hash outlive the bucket's time in the window; the calls after it in that
  -- bucket would add nothing to that, and the next bucket's first call extends it again
  if not bucket then redis.call('PEXPIRE', key, ttl) end
end

local function deny (reason, index, retryAt)
  return {0, reason, index, math.max(0, retryAt - now), now}
end

local maxTokens, cost = a.maxTokens, a.cost
local tokens = a.promptTokens + maxTokens * a.n
local info = {}

-- spend: the worst case must fit under every cap; where only the prompt fits, max_tokens may be clamped
local room = nil
local settledRoom = nil
for _, c in ipairs(caps) do
  local unsettled = c[3] - c[5]
  local left = unsettled - c[6]
  if room == nil or left < room then room = left end
  if settledRoom == nil or unsettled < settledRoom then settledRoom = unsettled end
end
if room ~= nil and cost > room then
  local affordable = 0
  if a.clamp and a.outputPerMillion > 0 and a.promptCost < room then
    affordable = math.floor((room - a.promptCost) * 1000000 / a.outputPerMillion)
    if affordable > maxTokens then affordable = maxTokens end
  end
  if affordable < 1 then
    -- the denial names, of the caps the call does not fit under even clamped to one token, the one whose period ends
    -- last (a lifetime's never): the call cannot succeed before then. On a tie the longer period, then the first
    -- scope, as memory-store.ts does
    local least = cost
    if a.clamp and a.outputPerMillion > 0 then
      least = math.min(cost, a.promptCost + math.ceil(a.outputPerMillion / 1000000))
    end
    local RESET = {d = a.day.e, m = a.month.e, l = math.huge}
    local RANK = {d = 1, m = 2, l = 3}
    local binding = nil
    for _, c in ipairs(caps) do
      if c[3] - c[5] - c[6] < least and (binding == nil or RESET[c[2]] > RESET[binding[2]] or
          (RESET[c[2]] == RESET[binding[2]] and RANK[c[2]] > RANK[binding[2]])) then
        binding = c
      end
    end
    local retryAfter = binding[2] == 'l' and -1 or (RESET[binding[2]] - now)
    -- busy: only calls in flight hold the room this one needs; they settle soon, usually for far less
    local need = a.clamp and (a.promptCost + math.ceil(a.outputPerMillion / 1000000)) or cost
    local busy = (settledRoom > room and settledRoom >= need) and 1 or 0
    -- a threshold is crossed once settled spend is at or past it, whatever moved it there: a refusal records, of every
    -- cap of the call (not only the one it names), those not recorded in the period, as a settlement does. So a cap
    -- used up beside the named one, or lowered below its spend (re-seeded at it), which no settlement crossed, reports
    -- them here. 100 % is the cap reached: in whole micro-units, less than one of its settled room left (the least a
    -- call is reserved, a batch job's creation; a token of the cheapest models costs less), whatever the calls in
    -- flight settle for; a call refused for being larger than what is left is no such refusal. The default thresholds
    -- are left out of the gateway's input. memory-store.ts does the same
    local crossed = nil
    if busy == 0 then
      local defaults = {${DEFAULT_THRESHOLDS.join(', ')}}
      for _, c in ipairs(caps) do
        for _, pct in ipairs(a.scopes[c[1]].th or defaults) do
          if c[5] * 100 >= c[3] * pct and redis.call('HSETNX', c[4], 't' .. pct, now) == 1 then
            crossed = crossed or {}
            table.insert(crossed, {c[4], pct})
          end
        end
      end
    end
    crossed = crossed and cjson.encode(crossed) or ''
    return {0, 'cap_' .. binding[2], binding[1], retryAfter, now, busy, crossed}
  end
  maxTokens = affordable
  cost = a.promptCost + math.ceil(affordable * a.outputPerMillion / 1000000)
  tokens = a.promptTokens + maxTokens * a.n
end

-- rates and concurrency, every scope, before anything is written; the bucket windows read, for the writes
local windows = {}
for i, scope in ipairs(a.scopes) do
  local w = {}
  windows[i] = w
  if scope.rpm then
    local key = scope.p .. ':rpm'
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - MINUTE)
    local count = redis.call('ZCARD', key)
    if count >= scope.rpm then
      local oldest = redis.call('ZRANGE', key, count - scope.rpm, count - scope.rpm, 'WITHSCORES')
      return deny('rpm', i, tonumber(oldest[2]) + MINUTE + 1)
    end
    -- the scope with the fewest requests left after this one names its limit
    if info.rpm == nil or scope.rpm - count - 1 < info.rpm[2] then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      info.rpm = {scope.rpm, scope.rpm - count - 1, first[2] and (tonumber(first[2]) + MINUTE - now) or MINUTE}
    end
  end
  if scope.rpd then
    local key = scope.p .. ':rpd'
    local total, bucket = window(key, hour, 24)
    if total + 1 > scope.rpd then return deny('rpd', i, fitsAt(key, hour, 24, HOUR, total, scope.rpd, 1)) end
    w.rpd = {total, bucket}
  end
  if scope.tpm then
    if tokens > scope.tpm then return {0, 'tpm_too_large', i, -1, now} end
    local key = scope.p .. ':tpm'
    local total, bucket = window(key, second, 60)
    if total + tokens > scope.tpm then
      return deny('tpm', i, fitsAt(key, second, 60, 1000, total, scope.tpm, tokens))
    end
    w.tpm = {total, bucket}
    if info.tpm == nil or scope.tpm - total - tokens < info.tpm[2] then
      info.tpm = {scope.tpm, scope.tpm - total - tokens, MINUTE}
    end
  end
  if scope.conc then
    local key = scope.p .. ':conc'
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    if redis.call('ZCARD', key) >= scope.conc then
      -- a slot frees when one of the calls in flight ends: about a usual call's length spread over the slots
      local usual = tonumber(redis.call('GET', key .. ':ms') or '1000')
      return deny('concurrency', i, now + math.max(50, math.min(60000, math.floor(usual / scope.conc))))
    end
  end
end

-- admitted: take everything at once
local held = {cost = cost, spend = {}, conc = {}, tpm = {}, second = second, at = now}
for i, scope in ipairs(a.scopes) do
  local w = windows[i]
  if scope.rpm then
    redis.call('ZADD', scope.p .. ':rpm', now, a.id)
    redis.call('PEXPIRE', scope.p .. ':rpm', MINUTE + 1000)
  end
  if scope.rpd then add(scope.p .. ':rpd', hour, 24, 1, w.rpd[1], w.rpd[2], 25 * HOUR) end
  if scope.tpm then
    add(scope.p .. ':tpm', second, 60, tokens, w.tpm[1], w.tpm[2], MINUTE + 2000)
    table.insert(held.tpm, scope.p .. ':tpm')
  end
  if scope.conc then
    redis.call('ZADD', scope.p .. ':conc', now + a.lease, a.id)
    if redis.call('PTTL', scope.p .. ':conc') < a.lease * 2 then redis.call('PEXPIRE', scope.p .. ':conc', a.lease * 2) end
    table.insert(held.conc, scope.p .. ':conc')
  end
end
for _, c in ipairs(caps) do
  redis.call('HINCRBY', c[4], 'reserved', cost)
  table.insert(held.spend, c[4])
end
redis.call('ZADD', RESV, now + a.lease, a.id)
redis.call('HSET', RESV_DATA, a.id, cjson.encode(held))
return {1, now, maxTokens, cost, tokens, room and (room - cost) or -1, cjson.encode(info)}
`

export const SEED_SCRIPT = EXPIRE_COUNTER + `
-- ARGV[1]: {entries = [[key, ledger sum, [ids the sum holds], [ids the ledger was asked about]], ...],
--           held = [ids holding a reservation when the ledger was asked]}, both read by SNAPSHOT_SCRIPT.
-- set-if-absent: a replica that seeds late never counts the ledger twice
local s = cjson.decode(ARGV[1])
local held = {}
for _, id in ipairs(s.held) do held['v:' .. id] = true end
local plan = {}
for _, entry in ipairs(s.entries) do
  local key = entry[1]
  if redis.call('HEXISTS', key, 'settled') == 0 then
    local recorded, asked = {}, {}
    for _, id in ipairs(entry[3]) do recorded['v:' .. id] = true end
    for _, id in ipairs(entry[4]) do asked['v:' .. id] = true end
    -- calls that settled while the counter was missing count once: from the ledger where its sum holds them, else
    -- from here. A call the snapshot knew neither as vouched for nor as held may be in the sum and here at once:
    -- nothing is written, and the replica takes a new snapshot
    local total, vouches = entry[2], {}
    local fields = redis.call('HGETALL', key)
    for i = 1, #fields, 2 do
      local field = fields[i]
      if string.sub(field, 1, 2) == 'v:' then
        if not recorded[field] then
          if not (asked[field] or held[field]) then return 0 end
          total = total + tonumber(fields[i + 1])
        end
        table.insert(vouches, field)
      end
    end
    table.insert(plan, {key, total, vouches})
  end
end
for _, step in ipairs(plan) do
  -- in slices: Lua's unpack takes some thousands of values at most, and a long loss can leave more vouches than that
  for i = 1, #step[3], 500 do redis.call('HDEL', step[1], unpack(step[3], i, math.min(i + 499, #step[3]))) end
  redis.call('HSET', step[1], 'settled', step[2])
  expireCounter(step[1])
end
redis.call('SET', KEYS[1] .. ':epoch', 1)
redis.call('DEL', KEYS[1] .. ':recovery')
return 1
`

export const SNAPSHOT_SCRIPT = `
-- at one instant: the request ids vouched for on each (missing) counter, for the ledger to say which it already
-- holds, and those of the calls holding a reservation, which their settlement will count, so the ledger sum must not
local vouched = {}
for i = 2, #KEYS do
  local ids = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
    if string.sub(field, 1, 2) == 'v:' then table.insert(ids, string.sub(field, 3)) end
  end
  vouched[i - 1] = ids
end
return cjson.encode({vouched = vouched, held = redis.call('ZRANGE', KEYS[1] .. ':resv', 0, -1)})
`

export const SETTLE_SCRIPT = EXPIRE_COUNTER + COMMON + `
local s = cjson.decode(ARGV[1])
-- once per request id, whatever retries or duplicates come after
if redis.call('ZADD', DONE, 'NX', now, s.id) == 0 then return {0} end
redis.call('ZREMRANGEBYSCORE', DONE, '-inf', now - 3600000)
redis.call('PEXPIRE', DONE, 3600000)

local settling = {}
for _, entry in ipairs(s.spend) do settling[entry[1]] = true end
local held = release(s.id, settling)
if held then
  -- the minute's token count becomes what Mistral reported, in the second the call was admitted, unless that second
  -- has left the window its sum holds
  local delta = s.tokens - s.reservedTokens
  for _, key in ipairs(held.tpm) do
    local values = redis.call('HMGET', key, FROM, SUM, held.second)
    local from = tonumber(values[1])
    if from == nil or not values[2] then
      if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, held.second, delta) end
    elseif held.second >= from and held.second <= from + 60 then
      local value = (tonumber(values[3]) or 0) + delta
      redis.call('HSET', key, held.second, value, SUM, tonumber(values[2]) + delta)
      -- the window's last bucket: the sum knows its new value
      if held.second == from + 60 then redis.call('HSET', key, SEEN, value) end
    end
  end
  -- how long the call held its slot, into the moving average a concurrency denial's Retry-After comes from
  if held.at then
    for _, key in ipairs(held.conc) do
      local usual = tonumber(redis.call('GET', key .. ':ms') or tostring(now - held.at))
      redis.call('SET', key .. ':ms', math.floor(usual * 0.8 + (now - held.at) * 0.2), 'PX', 3600000)
    end
  end
end

-- settled spend grows by the actual cost, and the reservation the call held there comes off, in one read and one
-- write. A counter lost meanwhile gets the cost vouched for by request id: the seed counts it unless the ledger
-- already holds the call, so it counts once whenever the record is written
local crossed = {}
for _, entry in ipairs(s.spend) do
  local key, cap = entry[1], entry[2]
  local back = nil
  for _, heldKey in ipairs(held and held.spend or {}) do if heldKey == key then back = held.cost end end
  local values = redis.call('HMGET', key, 'settled', 'reserved')
  if not values[1] then
    if back and (values[2] or redis.call('EXISTS', key) == 1) then redis.call('HINCRBY', key, 'reserved', -back) end
    redis.call('HSET', key, 'v:' .. s.id, s.cost)
    expireCounter(key)
  else
    local settled = tonumber(values[1]) + s.cost
    if back then
      redis.call('HSET', key, 'settled', settled, 'reserved', (tonumber(values[2]) or 0) - back)
    else
      redis.call('HSET', key, 'settled', settled)
    end
    for _, pct in ipairs(entry[3] or s.thresholds) do
      if settled * 100 >= cap * pct and redis.call('HSETNX', key, 't' .. pct, now) == 1 then
        table.insert(crossed, {key, pct})
      end
    end
  end
end
return {1, cjson.encode(crossed)}
`

export const RENEW_SCRIPT = EXPIRE_COUNTER + COMMON + `
-- a live call keeps its reservation and leases; a dead replica stops renewing and they expire.
-- ARGV[1]: {lease, calls = [{id, cost, spend, conc}]}
local r = cjson.decode(ARGV[1])
local lease = r.lease
local function keepLease (key, id, flag)
  if flag then redis.call('ZADD', key, flag, now + lease, id) else redis.call('ZADD', key, now + lease, id) end
  -- the lease set outlives its longest lease, or a full set would expire under a long stream
  if redis.call('PTTL', key) < lease * 2 then redis.call('PEXPIRE', key, lease * 2) end
end
for _, call in ipairs(r.calls) do
  local id = call.id
  if redis.call('ZSCORE', RESV, id) then
    redis.call('ZADD', RESV, now + lease, id)
    local raw = redis.call('HGET', RESV_DATA, id)
    if raw then
      for _, key in ipairs(cjson.decode(raw).conc) do keepLease(key, id, 'XX') end
    end
  elseif not redis.call('ZSCORE', DONE, id) then
    -- lost with the store's data (or expired while its replica stalled), still in flight: put it back. Its tokens
    -- per minute are not: the minute's buckets started over with the loss
    for _, key in ipairs(call.spend) do
      redis.call('HINCRBY', key, 'reserved', call.cost)
      expireCounter(key)
    end
    for _, key in ipairs(call.conc) do keepLease(key, id, nil) end
    redis.call('ZADD', RESV, now + lease, id)
    local held = {cost = call.cost, spend = call.spend, conc = call.conc, tpm = {}, second = 0}
    redis.call('HSET', RESV_DATA, id, cjson.encode(held))
  end
end
return 1
`

export const INSPECT_SCRIPT = COMMON + `
-- what each limit and cap of the given scopes has used, read-only (GET .../limits)
local a = cjson.decode(ARGV[1])
local function sum (key, last, span)
  local fields = {}
  for b = last - span, last do table.insert(fields, b) end
  local total = 0
  for _, v in ipairs(redis.call('HMGET', key, unpack(fields))) do total = total + (tonumber(v) or 0) end
  return total
end
local out = {}
for i, scope in ipairs(a.scopes) do
  local first = redis.call('ZRANGEBYSCORE', scope.p .. ':rpm', now - 60000, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local entry = {
    rpm = redis.call('ZCOUNT', scope.p .. ':rpm', now - 60000, '+inf'),
    rpmReset = first[2] and (tonumber(first[2]) + 60000 - now) or 0,
    rpd = sum(scope.p .. ':rpd', math.floor(now / 3600000), 24),
    tpm = sum(scope.p .. ':tpm', math.floor(now / 1000), 60),
    conc = redis.call('ZCOUNT', scope.p .. ':conc', now, '+inf'),
    spend = {}
  }
  for _, key in ipairs(scope.spend or {}) do
    local values = redis.call('HMGET', key, 'settled', 'reserved')
    table.insert(entry.spend, {key, tonumber(values[1]) or -1, tonumber(values[2]) or 0})
  end
  out[i] = entry
end
return cjson.encode({now = now, scopes = out})
`
