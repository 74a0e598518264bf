-- reserve.lua: one reservation, atomically. In order:
--   1. the order id already exists -> 'reserved' again, nothing charged (a
--      retry of a call whose answer was lost is safe); the order id was
--      given up on (its tombstone, written by transition.lua's release of
--      an order Redis never recorded) or this call arrives more than
--      grace_s after the order's expires_at (a copy delayed past any
--      tombstone) -> 'gone', nothing charged;
--   2. an Idempotency-Key already recorded -> 'replay' of its order when the
--      fingerprint matches, else 'key_reused' (before the open check, so a
--      retry still gets its order after sell-out or close);
--   3. the sale is open: switch live, starts_at <= now < ends_at (Redis TIME);
--   4. the per-user limit (units held in live orders) is not exceeded;
--   5. the units are charged to the node's lease (or, from_pool = 1, to the
--      pool directly: the classic per-request design);
--   6. writes: order record (status reserved), sold, the user's count, the
--      expiry queue, the key record and, with a Kafka order log (track = 1),
--      the order's entry in the not-yet-logged set.
-- Nothing is written before the last check passes.
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
-- KEYS[10] sk:{S}:gone:<order_id>  the order id's tombstone, if any
-- ARGV[1] node, ARGV[2] order_id, ARGV[3] user_id, ARGV[4] quantity,
-- ARGV[5] idempotency key ('' = none), ARGV[6] fingerprint (16 hex digits),
-- ARGV[7] expires_at (Unix s), ARGV[8] from_pool ('1' or '0'),
-- ARGV[9] track ('1': write the unlogged entry), ARGV[10] grace_s
--
-- Returns one of: {'reserved'}, {'replay', order_id, order_json},
-- {'key_reused'}, {'not_found'}, {'not_open'}, {'limit'}, {'sold_out'},
-- {'no_lease'}, {'gone'}.
local node, order_id, user_id = ARGV[1], ARGV[2], ARGV[3]
local qty = tonumber(ARGV[4])
local key = ARGV[5]

if redis.call('HEXISTS', KEYS[7], order_id) == 1 then
  return {'reserved'}
end

local time = redis.call('TIME')
local now = tonumber(time[1])
if redis.call('EXISTS', KEYS[10]) == 1 or now >= tonumber(ARGV[7]) + tonumber(ARGV[10]) then
  return {'gone'}
end

local spec = redis.call('HMGET', KEYS[1], 'switch', 'per_user_limit', 'starts_at', 'ends_at')
if not spec[1] then
  return {'not_found'}
end

if key ~= '' then
  local record = redis.call('HGET', KEYS[6], key)
  if record then
    local sep = string.find(record, '|', 1, true)
    if string.sub(record, 1, sep - 1) ~= ARGV[6] then
      return {'key_reused'}
    end
    local first = string.sub(record, sep + 1)
    local order = redis.call('HGET', KEYS[7], first)
    if not order then
      return redis.error_reply('ERR idempotency record without its order ' .. first)
    end
    return {'replay', first, order}
  end
end

local ends_at = tonumber(spec[4])
if spec[1] ~= 'live' or now < tonumber(spec[3]) or (ends_at > 0 and now >= ends_at) then
  return {'not_open'}
end

local held = tonumber(redis.call('HGET', KEYS[5], user_id) or '0')
if held + qty > tonumber(spec[2]) then
  return {'limit'}
end

if ARGV[8] == '1' then
  if tonumber(redis.call('GET', KEYS[2]) or '0') < qty then
    return {'sold_out'}
  end
  redis.call('DECRBY', KEYS[2], qty)
else
  if tonumber(redis.call('HGET', KEYS[4], node) or '0') < qty then
    return {'no_lease'}
  end
  redis.call('HINCRBY', KEYS[4], node, -qty)
end

local order = {
  user_id = user_id,
  quantity = qty,
  status = 'reserved',
  expires_at = tonumber(ARGV[7]),
  node = tonumber(node),
}
if key ~= '' then
  order.key = key
end
redis.call('HSET', KEYS[7], order_id, cjson.encode(order))
redis.call('INCRBY', KEYS[3], qty)
redis.call('HINCRBY', KEYS[5], user_id, qty)
redis.call('ZADD', KEYS[8], ARGV[7], order_id)
if key ~= '' then
  redis.call('HSET', KEYS[6], key, ARGV[6] .. '|' .. order_id)
end
if ARGV[9] == '1' then
  redis.call('ZADD', KEYS[9], now * 1000 + math.floor(tonumber(time[2]) / 1000), order_id .. '|reserved')
end
return {'reserved'}
