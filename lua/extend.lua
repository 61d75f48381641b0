--[[ extend: after holds are committed (or confirmed), stretch each one's seat leases and pool entries to the
hold's remaining life (token-checked). One call carries the extensions of one event's holds that a worker
committed together (every key of a call shares the event's hash tag).

ARGV[1]               h, the number of holds; then, for each hold in turn, its header and its keys:
ARGV (per hold)       value: "<token>:<holder fingerprint>"
                      new lease TTL, milliseconds (the hold's remaining life, from Postgres's clock)
                      n, the number of seat keys
                      request fingerprint to record for the idempotency key, or ''
                      idempotency record TTL, milliseconds
                      '1' to set a lease or pool entry that is missing (after a create's commit), '0' to
                      stretch only those there (after a confirm: a cancel racing it may already have released
                      them, and they must stay released)
                      m, the number of pools (may be 0)
                      '1' if the hold is now confirmed: its pool entries never lapse (score +inf); its seat
                      leases still take the TTL
                      m units, those the hold takes from each pool
KEYS[...] (per hold)  n seat lease keys, then for each pool its hash and its expiry sorted set, then the
                      request's idempotency record key when a fingerprint is given (KEYS[1] is the first
                      hold's first)

After a create, a lease or pool entry that lapsed while the commit ran is set again, even past the pool's
capacity: Postgres says the seat or the units are ours. A lease now owned by another value (or a blocked
seat) is left alone: Postgres will turn that request away.

Returns, per hold, the number of seats now leased to its value (pool entries are not counted).
]]
local now_ms = nil
local function clock_ms()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

local function extend_hold(a, k)
  -- a: the index of the hold's first ARGV, k: of its first KEY; returns seats leased, next a, next k.
  local lease_value = ARGV[a]
  local ttl_ms = tonumber(ARGV[a + 1])
  local slot_count = tonumber(ARGV[a + 2])
  local request_fp = ARGV[a + 3]
  local record_ttl_ms = tonumber(ARGV[a + 4])
  local set_missing = ARGV[a + 5] == '1'
  local pool_count = tonumber(ARGV[a + 6])
  local confirmed = ARGV[a + 7] == '1'
  local entry_field = 't:' .. lease_value

  local leased = 0
  for i = 0, slot_count - 1 do
    local key = KEYS[k + i]
    local owner = redis.call('GET', key)
    if owner == lease_value then
      redis.call('PEXPIRE', key, ttl_ms)
      leased = leased + 1
    elseif not owner and set_missing then
      redis.call('SET', key, lease_value, 'PX', ttl_ms)
      leased = leased + 1
    end
  end
  k = k + slot_count

  if pool_count > 0 then
    local score = '+inf'
    if not confirmed then
      score = clock_ms() + ttl_ms
    end
    for j = 0, pool_count - 1 do
      local pool = KEYS[k + 2 * j]
      local expiry = KEYS[k + 2 * j + 1]
      local quantity = tonumber(ARGV[a + 8 + j])
      if redis.call('HEXISTS', pool, entry_field) == 1 then
        -- Not ZADD XX: an entry is in the hash and the sorted set together, and if ever it were not, this
        -- puts it back where it can lapse.
        redis.call('ZADD', expiry, score, lease_value)
      elseif set_missing then
        redis.call('HSET', pool, entry_field, quantity)
        redis.call('HINCRBY', pool, 'used', quantity)
        redis.call('ZADD', expiry, score, lease_value)
      end
    end
    k = k + 2 * pool_count
  end

  if request_fp ~= '' then
    redis.call('SET', KEYS[k], request_fp, 'PX', record_ttl_ms)
    k = k + 1
  end
  return leased, a + 8 + pool_count, k
end

local leased_per_hold = {}
local a, k = 2, 1
for h = 1, tonumber(ARGV[1]) do
  leased_per_hold[h], a, k = extend_hold(a, k)
end
return leased_per_hold
