-- transition.lua: moves an order, exactly once.
--   reserved -> paid       only while now < expires_at; later the answer
--                          is 'invalid' 'expired' (the order stays reserved
--                          in Redis until whoever runs expiry expires it);
--   reserved -> cancelled  the units go back to the POOL, the user's count
--   reserved -> expired    and sold drop, the order leaves the expiry queue;
--                          expiring before expires_at is refused ('invalid'
--                          'reserved').
-- Repeating the move that already happened is 'unchanged'; any other move
-- from a non-reserved order is 'invalid' with the current status.
--
-- KEYS[1] sk:{S}:pool    unleased units
-- KEYS[2] sk:{S}:sold    units in reserved + paid orders
-- KEYS[3] sk:{S}:users   HASH user -> units held in live orders
-- KEYS[4] sk:{S}:orders  HASH order_id -> JSON order
-- KEYS[5] sk:{S}:due     ZSET order_id by expires_at
-- ARGV[1] order_id, ARGV[2] paid | cancelled | expired, ARGV[3] now (Unix s)
--
-- Returns {'not_found'}, {'unchanged', order_json}, {'invalid', status}
-- or {'changed', order_json}.
local order_id, to = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])

if to ~= 'paid' and to ~= 'cancelled' and to ~= 'expired' then
  return redis.error_reply('ERR unknown order status ' .. tostring(to))
end

local raw = redis.call('HGET', KEYS[4], order_id)
if not raw then
  return {'not_found'}
end
local order = cjson.decode(raw)

if order.status == to then
  return {'unchanged', raw}
end
if order.status ~= 'reserved' then
  return {'invalid', order.status}
end
if to == 'paid' and now >= order.expires_at then
  return {'invalid', 'expired'}
end
if to == 'expired' and now < order.expires_at then
  return {'invalid', 'reserved'}
end

order.status = to
local encoded = cjson.encode(order)
redis.call('HSET', KEYS[4], order_id, encoded)
redis.call('ZREM', KEYS[5], order_id)
if to ~= 'paid' then
  redis.call('INCRBY', KEYS[1], order.quantity)
  redis.call('DECRBY', KEYS[2], order.quantity)
  if redis.call('HINCRBY', KEYS[3], order.user_id, -order.quantity) <= 0 then
    redis.call('HDEL', KEYS[3], order.user_id)
  end
end
return {'changed', encoded}
