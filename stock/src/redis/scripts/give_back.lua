-- give_back.lua: a node gives units of its lease back to the pool: the
-- units in its shards (never the ones in flight in a reservation, which
-- stay charged to its lease), because another node wants them or they sat
-- idle.
--
-- KEYS[1] sk:{S}:pool    unleased units
-- KEYS[2] sk:{S}:leases  HASH node -> units leased and not yet sold
-- ARGV[1] node, ARGV[2] units
--
-- Returns the units given back: min(units, the node's lease), fewer than
-- asked when the lease was returned or reclaimed meanwhile (which took the
-- units back already).
local held = math.max(tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0'), 0)
local units = math.min(tonumber(ARGV[2]), held)
if units > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], -units)
  redis.call('INCRBY', KEYS[1], units)
end
return units
