-- recall.lua: what Idempotency-Keys of one sale stand for, for retries a
-- node is about to refuse (sold out, paused, closed, not started) whose
-- key its memory does not know: the key may have been used on another
-- node, or before a restart. Per key, in order, as reserve.lua's replay:
-- a record (not past its TTL) with the same fingerprint -> 'replay' of
-- its order, which marks the order acknowledged ("acked":1: the node
-- answers it 200, so transition.lua's release keeps it); another
-- fingerprint -> 'key_reused'; no record -> 'unused'. Writes nothing else.
--
-- KEYS[1] sk:{S}:idem     HASH key -> "fingerprint_hex|order_id"
-- KEYS[2] sk:{S}:idem_due ZSET key -> when its record expires (Unix s)
-- KEYS[3] sk:{S}:orders   HASH order_id -> JSON order
-- ARGV: 2 per key i (from ARGV[1 + 2 (i - 1)]): key, fingerprint (16 hex)
--
-- Returns one reply per key: {'unused'}, {'key_reused'},
-- {'replay', order_id, order_json} or {'error', message}.
local now = tonumber(redis.call('TIME')[1])

local function recall(key, fp)
  local record = redis.call('HGET', KEYS[1], key)
  if not record then
    return {'unused'}
  end
  local due = redis.call('ZSCORE', KEYS[2], key)
  if due and tonumber(due) <= now then
    return {'unused'}
  end
  local sep = string.find(record, '|', 1, true)
  if string.sub(record, 1, sep - 1) ~= fp then
    return {'key_reused'}
  end
  local first = string.sub(record, sep + 1)
  local order = redis.call('HGET', KEYS[3], first)
  if not order then
    return {'error', 'idempotency record without its order ' .. first}
  end
  if not string.find(order, '"acked":', 1, true) then
    order = string.sub(order, 1, -2) .. ',"acked":1}'
    redis.call('HSET', KEYS[3], first, order)
  end
  return {'replay', first, order}
end

local replies = {}
for i = 1, #ARGV, 2 do
  replies[#replies + 1] = recall(ARGV[i], ARGV[i + 1])
end
return replies
