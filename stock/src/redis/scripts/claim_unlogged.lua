-- claim_unlogged.lua: claims a sale's not-yet-logged entries for one
-- node's reconciler (journal mode), atomically, by Redis's clock.
--   Takes up to `limit` entries written more than grace_ms ago, oldest
--   first, and re-scores each to now: the entry stays in the set (so the
--   node that made the change may still remove it, and a repeat of the
--   move still finds it 'unlogged'), but no other reconciler takes it for
--   another grace_ms. The claimer logs the change and removes the entry;
--   if it dies first, the entry is taken again once that grace passes.
--
-- KEYS[1] sk:{S}:unlogged ZSET "order_id|change" by Redis time (ms)
-- ARGV[1] grace_ms, ARGV[2] limit
--
-- Returns the claimed entries.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local before = now_ms - tonumber(ARGV[1])
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', before),
  'LIMIT', 0, tonumber(ARGV[2]))
local score = string.format('%d', now_ms)
for _, entry in ipairs(taken) do
  redis.call('ZADD', KEYS[1], 'XX', score, entry)
end
return taken
