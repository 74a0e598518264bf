-- create.lua: creates a sale and pre-loads its whole stock into the pool, or
-- confirms that the same sale is already there. A sale that exists with
-- another spec is never overwritten.
--
-- KEYS[1] sk:{S}:spec   HASH
-- KEYS[2] sk:{S}:pool   unleased units
-- KEYS[3] sk:{S}:sold   units in reserved + paid orders
-- ARGV[1] stock, ARGV[2] per_user_limit, ARGV[3] starts_at (Unix s),
-- ARGV[4] ends_at (Unix s, 0 = none), ARGV[5] payment_timeout_s,
-- ARGV[6] ticket_required (1 = buyers need a ticket for the sale, 0 = not;
-- absent in specs written before tickets existed, which means 0)
--
-- Returns 1 (created), 0 (the same spec is already there),
-- -1 (another spec is already there; nothing written).
local fields = {'stock', 'per_user_limit', 'starts_at', 'ends_at', 'payment_timeout_s',
  'ticket_required'}
local absent = {ticket_required = '0'}

if redis.call('EXISTS', KEYS[1]) == 1 then
  local current = redis.call('HMGET', KEYS[1], unpack(fields))
  for i = 1, #fields do
    if (current[i] or absent[fields[i]]) ~= ARGV[i] then
      return -1
    end
  end
  return 0
end

redis.call('HSET', KEYS[1],
  'stock', ARGV[1], 'per_user_limit', ARGV[2], 'starts_at', ARGV[3],
  'ends_at', ARGV[4], 'payment_timeout_s', ARGV[5], 'ticket_required', ARGV[6],
  'switch', 'live')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], 0)
return 1
