-- nodes_live.lua: the nodes whose claim is live (Redis TIME), with the
-- delivery timeout each one published; lapsed claims are removed.
--
-- KEYS[1] sk:nodes  HASH node id -> JSON claim (see node_claim.lua)
--
-- Returns a flat array of integers: node id, kafka_timeout_ms, expires_at,
-- ... A claim that cannot be read is returned with kafka_timeout_ms -1
-- (unknown).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local ok, rec = pcall(cjson.decode, all[i + 1])
  if not ok or type(rec) ~= 'table' then
    table.insert(out, tonumber(all[i]) or -1)
    table.insert(out, -1)
    table.insert(out, 0)
  elseif (tonumber(rec.expires_at) or 0) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, tonumber(all[i]) or -1)
    table.insert(out, tonumber(rec.kafka_timeout_ms) or -1)
    table.insert(out, tonumber(rec.expires_at))
  end
end
return out
