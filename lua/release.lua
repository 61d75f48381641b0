--[[ release: drop the seat leases and pool entries of one hold (compare-and-delete by token).

KEYS[1..n]          seat lease keys of the hold
KEYS[n+1 .. n+2m]   for each pool j = 1..m: its hash, then its expiry sorted set
ARGV[1]             lease value: "<token>:<holder fingerprint>"
ARGV[2]             n, the number of seat keys
ARGV[3]             m, the number of pools (may be 0)

Returns the number of seat leases plus pool entries released (units back to their pool); leases owned by
other values, and blocked seats, are left alone.
]]
local lease_value = ARGV[1]
local slot_count = tonumber(ARGV[2])
local pool_count = tonumber(ARGV[3])
local entry_field = 't:' .. lease_value

local released = 0
for i = 1, slot_count do
  -- A lease value is never 'blocked' (it holds a colon): a blocked seat is never deleted here.
  if redis.call('GET', KEYS[i]) == lease_value then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end

for j = 1, pool_count do
  local pool = KEYS[slot_count + 2 * j - 1]
  local taken = redis.call('HGET', pool, entry_field)
  if taken then
    redis.call('HINCRBY', pool, 'used', -tonumber(taken))
    redis.call('HDEL', pool, entry_field)
    released = released + 1
  end
  redis.call('ZREM', KEYS[slot_count + 2 * j], lease_value)
end
return released
