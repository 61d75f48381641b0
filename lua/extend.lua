--[[ extend: after the hold is committed (or confirmed), stretch its seat leases and pool entries to the hold's
remaining life (token-checked).

KEYS[1..n]            seat lease keys of the hold
KEYS[n+1 .. n+2m]     for each pool j = 1..m: its hash, then its expiry sorted set
KEYS[n+2m+1]          the request's idempotency record key, present only when ARGV[4] ~= ''
ARGV[1]               lease value: "<token>:<holder fingerprint>"
ARGV[2]               new lease TTL, milliseconds (the hold's remaining life, from Postgres's clock)
ARGV[3]               n, the number of seat keys
ARGV[4]               request fingerprint to record for the idempotency key, or ''
ARGV[5]               idempotency record TTL, milliseconds
ARGV[6]               '1' to set a lease or pool entry that is missing (after a create's commit), '0' to
                      stretch only those there (after a confirm: a cancel racing it may already have released
                      them, and they must stay released)
ARGV[7]               m, the number of pools (may be 0)
ARGV[8]               '1' if the hold is now confirmed: its pool entries never lapse (score +inf); its seat
                      leases still take ARGV[2]
ARGV[9 .. 8+m]        units the hold takes from each pool

After a create, a lease or pool entry that lapsed while the commit ran is set again, even past the pool's
capacity: Postgres says the seat or the units are ours. A lease now owned by another value (or a blocked
seat) is left alone: Postgres will turn that request away.

Returns the number of seats now leased to ARGV[1] (pool entries are not counted).
]]
local lease_value = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local slot_count = tonumber(ARGV[3])
local request_fp = ARGV[4]
local record_ttl_ms = tonumber(ARGV[5])
local set_missing = ARGV[6] == '1'
local pool_count = tonumber(ARGV[7])
local confirmed = ARGV[8] == '1'
local entry_field = 't:' .. lease_value

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

if pool_count > 0 then
  local score = '+inf'
  if not confirmed then
    local t = redis.call('TIME')
    score = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl_ms
  end
  for j = 1, pool_count do
    local pool = KEYS[slot_count + 2 * j - 1]
    local expiry = KEYS[slot_count + 2 * j]
    local quantity = tonumber(ARGV[8 + j])
    if redis.call('HEXISTS', pool, entry_field) == 1 then
      -- Not ZADD XX: an entry is in the hash and the sorted set together, and if ever it were not, this puts
      -- it back where it can lapse.
      redis.call('ZADD', expiry, score, lease_value)
    elseif set_missing then
      redis.call('HSET', pool, entry_field, quantity)
      redis.call('HINCRBY', pool, 'used', quantity)
      redis.call('ZADD', expiry, score, lease_value)
    end
  end
end

if request_fp ~= '' then
  redis.call('SET', KEYS[slot_count + 2 * pool_count + 1], request_fp, 'PX', record_ttl_ms)
end
return leased
