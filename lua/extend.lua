--[[ extend: after the hold is committed, stretch its leases to the hold's remaining life (token-checked).

KEYS[1..n]  slot lease keys of the hold
KEYS[n+1]   the request's idempotency record key, present only when ARGV[4] ~= ''
ARGV[1]     lease value: "<token>:<holder fingerprint>"
ARGV[2]     new lease TTL, milliseconds (the hold's remaining life, from Postgres's clock)
ARGV[3]     n, the number of slot keys
ARGV[4]     request fingerprint to record for the idempotency key, or ''
ARGV[5]     idempotency record TTL, milliseconds
ARGV[6]     '1' to set a lease that is missing (after a create's commit), '0' to stretch only those there
            (after a confirm: a cancel racing it may already have released them, and must stay released)

After a create, a lease that lapsed while the commit ran is set again: Postgres says the slot is ours.
A lease now owned by another value is left alone: Postgres will turn that request away.

Returns the number of slots now leased to ARGV[1].
]]
local lease_value = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local slot_count = tonumber(ARGV[3])
local request_fp = ARGV[4]
local record_ttl_ms = tonumber(ARGV[5])
local set_missing = ARGV[6] == '1'

local leased = 0
for i = 1, slot_count do
  local owner = redis.call('GET', KEYS[i])
  if owner == lease_value then
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    leased = leased + 1
  elseif not owner and set_missing then
    redis.call('SET', KEYS[i], lease_value, 'PX', ttl_ms)
    leased = leased + 1
  end
end

if request_fp ~= '' then
  redis.call('SET', KEYS[slot_count + 1], request_fp, 'PX', record_ttl_ms)
end
return leased
