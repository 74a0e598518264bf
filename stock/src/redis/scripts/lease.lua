-- lease.lua: leases a chunk of the pool to a node and refreshes the node's
-- heartbeat deadline to now + ttl (Redis TIME).
--
-- Chunks shrink as the pool runs low, so that the last units are not
-- stranded on one node:  grant = min(want, pool, max(1, ceil(pool / 4))).
-- A closed sale or an empty pool grants 0. A paused sale still leases (the
-- pause is reversible and reserve refuses while paused). Nodes lease
-- through want.lua (the same grant, and wants when the pool is empty).
--
-- KEYS[1] sk:{S}:spec    HASH
-- KEYS[2] sk:{S}:pool    unleased units
-- KEYS[3] sk:{S}:leases  HASH node -> units leased and not yet sold
-- KEYS[4] sk:{S}:hb      HASH node -> heartbeat deadline (Unix ms)
-- ARGV[1] node, ARGV[2] want, ARGV[3] ttl_ms
--
-- Returns {granted, pool_left}, or {-1, 0} when the sale does not exist.
local switch = redis.call('HGET', KEYS[1], 'switch')
if not switch then
  return {-1, 0}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[4], ARGV[1], string.format('%d', now_ms + tonumber(ARGV[3])))

local pool = tonumber(redis.call('GET', KEYS[2]) or '0')
local want = tonumber(ARGV[2])
if switch == 'closed' or pool <= 0 or want <= 0 then
  return {0, math.max(pool, 0)}
end

local chunk = math.max(1, math.ceil(pool / 4))
local grant = math.min(want, pool, chunk)
redis.call('DECRBY', KEYS[2], grant)
redis.call('HINCRBY', KEYS[3], ARGV[1], grant)
return {grant, pool - grant}
