-- node_claim.lua: claims node id N for one node process, or refreshes that
-- process's claim (the same call: a claim that lapsed is taken again). A
-- claim lives until its expires_at (Redis TIME); another process's live
-- claim is never overwritten.
--
-- KEYS[1] sk:nodes  HASH node id -> JSON {token, kafka_timeout_ms,
--                   started_at, expires_at} (Unix ms, Redis time)
-- ARGV[1] node id, ARGV[2] token (random, one per process),
-- ARGV[3] ttl_ms, ARGV[4] kafka_timeout_ms (0: no Kafka order log)
--
-- Returns {1, 0} refreshed (this token's live claim), {2, 0} claimed (no
-- live claim was there), {0, expires_at} another token holds it until
-- expires_at, {0, -1} a claim that cannot be read holds it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local started = now
local outcome = 2
if raw then
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then
    return {0, -1}
  end
  local expires = tonumber(rec.expires_at) or 0
  if rec.token == ARGV[2] and expires > now then
    outcome = 1
    started = tonumber(rec.started_at) or now
  elseif rec.token ~= ARGV[2] and expires > now then
    return {0, expires}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format(
  '{"token":%s,"kafka_timeout_ms":%d,"started_at":%d,"expires_at":%d}',
  cjson.encode(ARGV[2]), tonumber(ARGV[4]), started, now + tonumber(ARGV[3])))
return {outcome, 0}
