-- switch.lua: applies an operator's switch. Closed is final: closing again
-- is a no-op, pausing or resuming a closed sale is refused.
--
-- KEYS[1] sk:{S}:spec   HASH (field `switch` = live | paused | closed)
-- ARGV[1] pause | resume | close
--
-- Returns 'ok', 'not_found' (no such sale) or 'closed' (refused: the sale
-- is closed). An unknown ARGV[1] is a script error.
local to = ({pause = 'paused', resume = 'live', close = 'closed'})[ARGV[1]]
if not to then
  return redis.error_reply('ERR unknown switch ' .. tostring(ARGV[1]))
end

local current = redis.call('HGET', KEYS[1], 'switch')
if not current then
  return 'not_found'
end
if current == 'closed' then
  if to == 'closed' then
    return 'ok'
  end
  return 'closed'
end
redis.call('HSET', KEYS[1], 'switch', to)
return 'ok'
