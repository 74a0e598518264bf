-- node_release.lua: gives node id N back, if this process still holds it.
--
-- KEYS[1] sk:nodes  HASH node id -> JSON claim (see node_claim.lua)
-- ARGV[1] node id, ARGV[2] token
--
-- Returns 1 (released) or 0 (not this token's claim: left alone).
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  return 0
end
local ok, rec = pcall(cjson.decode, raw)
if not ok or type(rec) ~= 'table' or rec.token ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
