-- reserve.lua: a batch of reservations of one sale, atomically, each one
-- decided as if it ran alone, in the batch's order (a later reservation
-- sees what an earlier one wrote). Per reservation, in order:
--   1. the order id already exists -> 'reserved' again, nothing charged (a
--      retry of a call whose answer was lost is safe); the order id was
--      given up on (its tombstone, written by transition.lua's release of
--      an order Redis never recorded) or this call arrives more than
--      grace_s after the order's expires_at (a copy delayed past any
--      tombstone) -> 'gone', nothing charged;
--   2. an Idempotency-Key already recorded (and not past its TTL) ->
--      'replay' of its order when the fingerprint matches, else
--      'key_reused' (before the open check, so a retry still gets its order
--      after sell-out or close). A replay is answered 200 by the node, so
--      it marks the order acknowledged ("acked":1): transition.lua's
--      release (the compensation of an order never acknowledged) then
--      keeps it;
--   3. the sale is open: switch live, starts_at <= now < ends_at (Redis TIME);
--   4. the per-user limit (units held in live orders) is not exceeded;
--   5. the units are charged to the node's lease (or, from_pool = 1, to the
--      pool directly: the classic per-request design);
--   6. writes: order record (status reserved), the user's count, the
--      expiry queue, the key record and its expiry (now + key_ttl_s; the
--      backend trims expired records in batches, expire_keys.lua) and,
--      with track = 1, the order's entry in the not-yet-logged set (the
--      node removes it once its event is durable; else a reconciler finds
--      it).
-- Nothing is written for a reservation before its last check passes. The
-- batch's reads and writes are made once for all its reservations
-- (nothing else runs in between: the script is atomic), which is what
-- makes a batch cheaper than one call per reservation: the sale's spec,
-- the clock and the lease are read once; the order ids (HMGET), their
-- tombstones (one EXISTS of all) and the users' holdings (HMGET) once up
-- front; the orders, holdings, expiry entries, key records and
-- not-yet-logged entries written once each at the end, and what the batch
-- charged to the lease, the pool and `sold` likewise. In between, what an
-- earlier reservation of the batch wrote lives in the tables `written`
-- (orders), `held` (users) and `key_records`, which every check
-- reads before Redis.
--
-- KEYS[1] sk:{S}:spec    HASH
-- KEYS[2] sk:{S}:pool    unleased units
-- KEYS[3] sk:{S}:sold    units in reserved + paid orders
-- KEYS[4] sk:{S}:leases  HASH node -> units leased and not yet sold
-- KEYS[5] sk:{S}:users   HASH user -> units held in live orders
-- KEYS[6] sk:{S}:idem    HASH key -> "fingerprint_hex|order_id"
-- KEYS[7] sk:{S}:orders  HASH order_id -> JSON order
-- KEYS[8] sk:{S}:due     ZSET order_id by expires_at (reserved orders)
-- KEYS[9] sk:{S}:unlogged ZSET "order_id|status" by Redis time (ms): changes
--                         the order log has not been seen to record yet
-- KEYS[10] sk:{S}:idem_due ZSET key -> when its record expires (Unix s)
-- KEYS[10 + i] sk:{S}:gone:<order_id of reservation i>  its tombstone, if any
-- ARGV[1] node, ARGV[2] track ('1': write the unlogged entries),
-- ARGV[3] grace_s, ARGV[4] key_ttl_s ('0': keys never expire), then 7 per
-- reservation i (from ARGV[5 + 7 (i - 1)]):
--   order_id, user_id, quantity, idempotency key ('' = none),
--   fingerprint (16 hex digits), expires_at (Unix s), from_pool ('1' or '0')
--
-- Returns one reply per reservation, each one of: {'reserved'},
-- {'replay', order_id, order_json}, {'key_reused'}, {'not_found'},
-- {'not_open'}, {'limit'}, {'sold_out'}, {'no_lease'}, {'gone'},
-- {'error', message}.
local node, track, grace = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local key_ttl = tonumber(ARGV[4])

local time = redis.call('TIME')
local now = tonumber(time[1])
-- As a string, made once: a Lua number handed to redis.call is formatted
-- (as a float) on every call.
local now_ms = time[1] .. string.format('%03d', math.floor(tonumber(time[2]) / 1000))

local spec = redis.call('HMGET', KEYS[1], 'switch', 'per_user_limit', 'starts_at', 'ends_at')
local open, limit = false, 0
if spec[1] then
  local ends_at = tonumber(spec[4])
  open = spec[1] == 'live' and now >= tonumber(spec[3]) and (ends_at == 0 or now < ends_at)
  limit = tonumber(spec[2])
end

-- A JSON string: quoted as is when nothing in it needs escaping (ids
-- usually), else by cjson.
local function json_string(v)
  if string.find(v, '[%c"\\\128-\255]') then
    return cjson.encode(v)
  end
  return '"' .. v .. '"'
end

-- The batch's arguments: 7 per reservation from ARGV[5].
local n = math.floor((#ARGV - 4) / 7)
local order_ids, user_ids = {}, {}
for i = 1, n do
  order_ids[i] = ARGV[5 + 7 * (i - 1)]
  user_ids[i] = ARGV[6 + 7 * (i - 1)]
end

-- Read once up front: which order ids Redis has, whether any has a
-- tombstone (almost never: then each is looked up), the users' holdings.
local recorded, tombstones, stored_held = {}, 0, {}
if n > 0 then
  recorded = redis.call('HMGET', KEYS[7], unpack(order_ids))
  tombstones = redis.call('EXISTS', unpack(KEYS, 11, 10 + n))
  stored_held = redis.call('HMGET', KEYS[5], unpack(user_ids))
end

-- What earlier reservations of the batch wrote, not in Redis yet:
-- order id -> record, user -> units held, key -> "fingerprint|order_id".
local written, held, key_records = {}, {}, {}
-- The writes of the batch, in order, made at the end.
local order_writes, user_writes, due_writes, key_writes, key_due_writes, unlogged_writes =
  {}, {}, {}, {}, {}, {}

-- Units left in the node's lease and in the pool, read when first needed;
-- what the batch took from each, and sold, written at the end.
local lease_left, pool_left
local lease_taken, pool_taken, sold = 0, 0, 0

local function push(t, a, b)
  t[#t + 1] = a
  t[#t + 1] = b
end

-- qty is the number, qty_arg and expires_at the arguments as given
-- (integers in decimal), which go into the records unconverted.
local function reserve(i, order_id, user_id, qty, qty_arg, key, fp, expires_at, from_pool)
  if recorded[i] or written[order_id] then
    return {'reserved'}
  end
  if (tombstones > 0 and redis.call('EXISTS', KEYS[10 + i]) == 1)
      or now >= tonumber(expires_at) + grace then
    return {'gone'}
  end
  if not spec[1] then
    return {'not_found'}
  end
  if key ~= '' then
    local record = key_records[key]
    if not record then
      record = redis.call('HGET', KEYS[6], key)
      if record then
        -- Past its TTL and not trimmed yet: as if absent (overwritten below).
        local due = redis.call('ZSCORE', KEYS[10], key)
        if due and tonumber(due) <= now then
          record = nil
        end
      end
    end
    if record then
      local sep = string.find(record, '|', 1, true)
      if string.sub(record, 1, sep - 1) ~= fp then
        return {'key_reused'}
      end
      local first = string.sub(record, sep + 1)
      local order = written[first] or redis.call('HGET', KEYS[7], first)
      if not order then
        return {'error', 'idempotency record without its order ' .. first}
      end
      if not string.find(order, '"acked":', 1, true) then
        order = string.sub(order, 1, -2) .. ',"acked":1}'
        if written[first] then
          written[first] = order
        else
          redis.call('HSET', KEYS[7], first, order)
        end
      end
      return {'replay', first, order}
    end
  end
  if not open then
    return {'not_open'}
  end
  local units = held[user_id] or tonumber(stored_held[i] or '0')
  if units + qty > limit then
    return {'limit'}
  end
  if from_pool then
    pool_left = pool_left or tonumber(redis.call('GET', KEYS[2]) or '0')
    if pool_left < qty then
      return {'sold_out'}
    end
    pool_left = pool_left - qty
    pool_taken = pool_taken + qty
  else
    lease_left = lease_left or tonumber(redis.call('HGET', KEYS[4], node) or '0')
    if lease_left < qty then
      return {'no_lease'}
    end
    lease_left = lease_left - qty
    lease_taken = lease_taken + qty
  end
  sold = sold + qty
  -- The record transition.lua and the nodes read (cjson's fields), built
  -- by concatenation: cjson.encode formats each number as a float.
  local order = '{"user_id":' .. json_string(user_id) .. ',"quantity":' .. qty_arg ..
    ',"status":"reserved","expires_at":' .. expires_at .. ',"node":' .. node
  if key ~= '' then
    -- The fingerprint too, so that an order_reserved logged from this
    -- record (the settler's, a reconciler's) carries both.
    order = order .. ',"key":' .. json_string(key) .. ',"fp":"' .. fp .. '"'
  end
  written[order_id] = order .. '}'
  order_writes[#order_writes + 1] = order_id
  if not held[user_id] then
    user_writes[#user_writes + 1] = user_id
  end
  held[user_id] = units + qty
  push(due_writes, expires_at, order_id)
  if key ~= '' then
    if not key_records[key] then
      key_writes[#key_writes + 1] = key
    end
    key_records[key] = fp .. '|' .. order_id
    if key_ttl > 0 then
      push(key_due_writes, now + key_ttl, key)
    end
  end
  if track then
    push(unlogged_writes, now_ms, order_id .. '|reserved')
  end
  return {'reserved'}
end

local replies = {}
for i = 1, n do
  local a = 5 + 7 * (i - 1)
  replies[i] = reserve(i, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6] == '1')
end

-- The batch's writes, one command each.
if #order_writes > 0 then
  local args = {}
  for _, id in ipairs(order_writes) do
    push(args, id, written[id])
  end
  redis.call('HSET', KEYS[7], unpack(args))
  args = {}
  for _, user in ipairs(user_writes) do
    push(args, user, string.format('%d', held[user]))
  end
  redis.call('HSET', KEYS[5], unpack(args))
  redis.call('ZADD', KEYS[8], unpack(due_writes))
end
if #key_writes > 0 then
  local args = {}
  for _, key in ipairs(key_writes) do
    push(args, key, key_records[key])
  end
  redis.call('HSET', KEYS[6], unpack(args))
end
if #key_due_writes > 0 then
  redis.call('ZADD', KEYS[10], unpack(key_due_writes))
end
if #unlogged_writes > 0 then
  redis.call('ZADD', KEYS[9], unpack(unlogged_writes))
end
if lease_taken > 0 then
  redis.call('HINCRBY', KEYS[4], node, -lease_taken)
end
if pool_taken > 0 then
  redis.call('DECRBY', KEYS[2], pool_taken)
end
if sold > 0 then
  redis.call('INCRBY', KEYS[3], sold)
end
return replies
