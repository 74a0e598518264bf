-- expire_keys.lua: forgets up to ARGV[1] Idempotency-Key records of one
-- sale whose TTL passed (Redis time), oldest first. Run by the nodes'
-- housekeeping, about once a second, until a call finds fewer than asked;
-- the hot path never scans. A key whose record was written again since
-- carries its new expiry, so only expired records go.
--
-- KEYS[1] sk:{S}:idem     HASH key -> "fingerprint_hex|order_id"
-- KEYS[2] sk:{S}:idem_due ZSET key -> when its record expires (Unix s)
-- ARGV[1] most records to forget
--
-- Returns how many were forgotten.
local now = tonumber(redis.call('TIME')[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then
  redis.call('HDEL', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[2], unpack(due))
end
return #due
