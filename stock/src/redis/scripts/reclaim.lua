-- reclaim.lua: run by any node. Every lease whose heartbeat deadline passed
-- (Redis TIME), or that has no heartbeat at all, goes back to the pool;
-- expired heartbeats of nodes without a lease are forgotten.
--
-- KEYS[1] sk:{S}:pool    unleased units
-- KEYS[2] sk:{S}:leases  HASH node -> units
-- KEYS[3] sk:{S}:hb      HASH node -> heartbeat deadline (Unix ms)
--
-- Returns the number of units reclaimed.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local total = 0
local leases = redis.call('HGETALL', KEYS[2])
for i = 1, #leases, 2 do
  local node = leases[i]
  local deadline = tonumber(redis.call('HGET', KEYS[3], node) or '0')
  if deadline <= now_ms then
    total = total + tonumber(leases[i + 1])
    redis.call('HDEL', KEYS[2], node)
    redis.call('HDEL', KEYS[3], node)
  end
end

local beats = redis.call('HGETALL', KEYS[3])
for i = 1, #beats, 2 do
  if tonumber(beats[i + 1]) <= now_ms then
    redis.call('HDEL', KEYS[3], beats[i])
  end
end

if total > 0 then
  redis.call('INCRBY', KEYS[1], total)
end
return total
