-- return_lease.lua: gives a node's whole unsold lease back to the pool (a
-- graceful stop) and forgets its heartbeat.
--
-- KEYS[1] sk:{S}:pool    unleased units
-- KEYS[2] sk:{S}:leases  HASH node -> units
-- KEYS[3] sk:{S}:hb      HASH node -> heartbeat deadline (Unix ms)
-- ARGV[1] node
--
-- Returns the number of units returned.
local units = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if units > 0 then
  redis.call('INCRBY', KEYS[1], units)
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return units
