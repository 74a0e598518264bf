-- Publishes one node's stats record and reads every live node's.
--
-- KEYS[1]  sk:{stats}:nodes   SET of node ids that published a record
-- ARGV[1]  node id
-- ARGV[2]  the node's record (JSON, opaque here)
-- ARGV[3]  its TTL in ms (a node that stops publishing drops out)
--
-- Records live at sk:{stats}:node:<id> (same hash tag, same slot).
-- Returns a flat array: id1, record1, id2, record2, ... for the records
-- still alive; ids whose record expired are removed from the set.
local prefix = 'sk:{stats}:node:'
redis.call('SET', prefix .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', prefix .. id)
  if record then
    out[#out + 1] = id
    out[#out + 1] = record
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
