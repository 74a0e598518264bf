-- want.lua: leases a chunk of the pool to a node as lease.lua does; when
-- the pool is empty while other nodes hold unsold leased units, posts the
-- node's want instead (node -> deadline, Redis time), which those nodes
-- read on their next poll and answer by giving their surplus back
-- (give_back.lua). Either way it answers what the node needs to decide
-- without another call: sold out (nothing in the pool nor in other nodes'
-- leases), or wait for a unit to come back.
--
-- grant = min(want, pool, max(1, ceil(pool / 4))), as lease.lua. A closed
-- sale grants 0 and posts nothing. A grant clears the node's want.
--
-- KEYS[1] sk:{S}:spec    HASH
-- KEYS[2] sk:{S}:pool    unleased units
-- KEYS[3] sk:{S}:sold    units in reserved + paid orders
-- KEYS[4] sk:{S}:leases  HASH node -> units leased and not yet sold
-- KEYS[5] sk:{S}:hb      HASH node -> heartbeat deadline (Unix ms)
-- KEYS[6] sk:{S}:wants   HASH node -> deadline of its want (Unix ms)
-- ARGV[1] node, ARGV[2] want, ARGV[3] ttl_ms, ARGV[4] wait_ms (how long
-- the want stands; 0: lease only, post no want)
--
-- Returns {granted, pool_left, sold, elsewhere} (elsewhere: units leased to
-- the other nodes and not yet sold), or {-1, 0, 0, 0} when the sale does
-- not exist.
local switch = redis.call('HGET', KEYS[1], 'switch')
if not switch then
  return {-1, 0, 0, 0}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[5], ARGV[1], string.format('%d', now_ms + tonumber(ARGV[3])))

local pool = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), 0)
local sold = tonumber(redis.call('GET', KEYS[3]) or '0')
local elsewhere = 0
local leases = redis.call('HGETALL', KEYS[4])
for i = 1, #leases, 2 do
  if leases[i] ~= ARGV[1] then
    elsewhere = elsewhere + math.max(tonumber(leases[i + 1]), 0)
  end
end

local want = tonumber(ARGV[2])
if switch == 'closed' or want <= 0 then
  return {0, pool, sold, elsewhere}
end
if pool > 0 then
  local grant = math.min(want, pool, math.max(1, math.ceil(pool / 4)))
  redis.call('DECRBY', KEYS[2], grant)
  redis.call('HINCRBY', KEYS[4], ARGV[1], grant)
  redis.call('HDEL', KEYS[6], ARGV[1])
  return {grant, pool - grant, sold, elsewhere}
end
if elsewhere > 0 and tonumber(ARGV[4]) > 0 then
  redis.call('HSET', KEYS[6], ARGV[1], string.format('%d', now_ms + tonumber(ARGV[4])))
end
return {0, 0, sold, elsewhere}
