-- heartbeat.lua: refreshes a node's heartbeat deadline to now + ttl (Redis
-- TIME), only where the node holds a lease: a lease that was reclaimed is
-- not brought back by a late heartbeat.
--
-- KEYS[1] sk:{S}:leases  HASH node -> units
-- KEYS[2] sk:{S}:hb      HASH node -> heartbeat deadline (Unix ms)
-- ARGV[1] node, ARGV[2] ttl_ms
--
-- Returns 1 (refreshed) or 0 (the node holds no lease here).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', now_ms + tonumber(ARGV[2])))
return 1
