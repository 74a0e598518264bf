-- transition.lua: moves an order, exactly once.
--   reserved -> paid       only while now < expires_at; later the answer
--                          is 'invalid' 'expired' (the order stays reserved
--                          in Redis until whoever runs expiry expires it);
--   reserved -> cancelled  the units go back to the POOL, the user's count
--   reserved -> expired    and sold drop, the order leaves the expiry queue;
--                          expiring before expires_at is refused ('invalid'
--                          'reserved').
--   reserved -> released   compensation for an order never acknowledged (its
--                          log append failed, or its node died before it):
--                          as cancelled (the order reads 'cancelled'), and
--                          the Idempotency-Key record is dropped so that the
--                          buyer's retry is a fresh attempt, not a replay of
--                          an order nobody was told about.
--   An order a replay answered 200 on some node ("acked":1, written by
--   reserve.lua's replay) is never released: the answer is {'kept',
--   order_json} and nothing changes; it lives on as any reserved order
--   (paid, cancelled by its buyer, or expired).
-- Repeating the move that already happened is 'unchanged' (released: the
-- order is cancelled) or, with track = 1, 'unlogged' while the move's
-- entry is still in the not-yet-logged set (its event may never have
-- reached the log: the caller logs it); any other move from a non-reserved
-- order is
-- 'invalid' with the current status. Time is Redis's clock (TIME), never
-- the caller's.
--   released of an order id Redis never recorded, with ARGV[5] = node (the
--   node settles a reservation whose reply it never got, and will not
--   acknowledge it): writes the tombstone KEYS[9] (SET NX, expiring
--   grace_s after the order's expires_at, at least grace_s from now), so
--   that a late copy of that reserve is refused ('gone' in reserve.lua),
--   and moves the order's units from the node's lease back to the pool (the
--   node dropped them locally). Only the call that writes the tombstone
--   moves units: a repeat answers {'gone', '0'}. A lease holding fewer
--   units than the order (returned or reclaimed since: the units went back
--   with it) moves nothing.
-- With track = 1 (a Kafka order log), a change also writes
-- "order_id|<to>" into the not-yet-logged set, so that a change whose event
-- never reached the log is found and logged later (the settler).
--
-- KEYS[1] sk:{S}:pool     unleased units
-- KEYS[2] sk:{S}:sold     units in reserved + paid orders
-- KEYS[3] sk:{S}:users    HASH user -> units held in live orders
-- KEYS[4] sk:{S}:orders   HASH order_id -> JSON order
-- KEYS[5] sk:{S}:due      ZSET order_id by expires_at
-- KEYS[6] sk:{S}:idem     HASH key -> "fingerprint_hex|order_id"
-- KEYS[7] sk:{S}:unlogged ZSET "order_id|status" by Redis time (ms)
-- KEYS[8] sk:{S}:leases   HASH node -> units leased and not yet sold
-- KEYS[9] sk:{S}:gone:<order_id>  the order id's tombstone (string, TTL)
-- ARGV[1] order_id, ARGV[2] paid | cancelled | expired | released,
-- ARGV[3] unused (was the caller's clock), ARGV[4] track ('1' or '0'),
-- ARGV[5] node ('' = no tombstone), ARGV[6] quantity, ARGV[7] expires_at
-- (Unix s), ARGV[8] grace_s (with ARGV[5] only)
--
-- Returns {'not_found'}, {'unchanged', order_json}, {'invalid', status},
-- {'unlogged', order_json}, {'changed', order_json}, {'kept', order_json} or
-- {'gone', units_returned_to_the_pool}.
local order_id, to = ARGV[1], ARGV[2]
local time = redis.call('TIME')
local now = tonumber(time[1])

if to ~= 'paid' and to ~= 'cancelled' and to ~= 'expired' and to ~= 'released' then
  return redis.error_reply('ERR unknown order status ' .. tostring(to))
end
local status = to
if to == 'released' then
  status = 'cancelled'
end

local raw = redis.call('HGET', KEYS[4], order_id)
if not raw then
  if to ~= 'released' or ARGV[5] == '' then
    return {'not_found'}
  end
  local qty = tonumber(ARGV[6])
  local grace = tonumber(ARGV[8])
  local ttl = math.max(tonumber(ARGV[7]) + grace - now, grace)
  if not redis.call('SET', KEYS[9], '1', 'NX', 'EX', ttl) then
    return {'gone', '0'}
  end
  local held = tonumber(redis.call('HGET', KEYS[8], ARGV[5]) or '0')
  if held < qty then
    return {'gone', '0'}
  end
  redis.call('HINCRBY', KEYS[8], ARGV[5], -qty)
  redis.call('INCRBY', KEYS[1], qty)
  return {'gone', tostring(qty)}
end
local order = cjson.decode(raw)

if order.status == status then
  if to ~= 'released' and ARGV[4] == '1'
      and redis.call('ZSCORE', KEYS[7], order_id .. '|' .. to) then
    return {'unlogged', raw}
  end
  return {'unchanged', raw}
end
if order.status ~= 'reserved' then
  return {'invalid', order.status}
end
if to == 'released' and order.acked then
  return {'kept', raw}
end
if to == 'paid' and now >= order.expires_at then
  return {'invalid', 'expired'}
end
if to == 'expired' and now < order.expires_at then
  return {'invalid', 'reserved'}
end

order.status = status
local encoded = cjson.encode(order)
redis.call('HSET', KEYS[4], order_id, encoded)
redis.call('ZREM', KEYS[5], order_id)
if status ~= 'paid' then
  redis.call('INCRBY', KEYS[1], order.quantity)
  redis.call('DECRBY', KEYS[2], order.quantity)
  if redis.call('HINCRBY', KEYS[3], order.user_id, -order.quantity) <= 0 then
    redis.call('HDEL', KEYS[3], order.user_id)
  end
end
if to == 'released' and order.key then
  local record = redis.call('HGET', KEYS[6], order.key)
  if record and string.sub(record, string.find(record, '|', 1, true) + 1) == order_id then
    redis.call('HDEL', KEYS[6], order.key)
  end
end
if ARGV[4] == '1' then
  local ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZADD', KEYS[7], ms, order_id .. '|' .. to)
end
return {'changed', encoded}
