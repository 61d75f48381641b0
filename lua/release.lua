--[[ release: drop the leases of one hold (compare-and-delete by token).

KEYS[1..n]  slot lease keys of the hold
ARGV[1]     lease value: "<token>:<holder fingerprint>"

Returns the number of leases deleted; leases owned by other values are left alone.
]]
local lease_value = ARGV[1]

local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == lease_value then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
