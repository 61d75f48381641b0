--[[ acquire: for each of several new holds of one event, in turn, take a pending lease on every seat and the
units of every pool, or nothing. One call carries the acquisitions of one event that a worker's requests made
in one event-loop pass (every key shares the event's hash tag); each is judged after those before it, exactly
as if it were a call of its own.

KEYS[1]               the event's sync marker (holds the run_id of the instance it was last synchronized on)
ARGV[1]               run_id of the Redis instance the caller checked on its connection
ARGV[2]               h, the number of holds; then, for each hold in turn, its header and its keys:
ARGV (per hold)       lease value: "<token>:<holder fingerprint>"
                      holder fingerprint (the suffix of every lease value of this holder)
                      pending TTL, milliseconds (long enough for one Postgres commit), of seats and units
                      request fingerprint of an Idempotency-Key request, or ''
                      n, the number of seat keys
                      m, the number of pools (may be 0)
                      m units, those taken from each pool (>= 1)
KEYS (per hold)       n seat lease keys, sorted by seat id; then for each pool j = 1..m its hash (capacity,
                      used, 't:'..lease value -> quantity) and its expiry sorted set (lease value scored by
                      expiry, milliseconds by Redis's clock); then the request's idempotency record key, present
                      only when a request fingerprint is given

A seat whose key holds 'blocked' (keys.BLOCKED_LEASE_VALUE) is blocked. Before the pools are judged, their
entries that lapsed are purged (units back, no sweeper needed); that purge is the only write of any outcome
but ACQUIRED.

Returns {5} (NOT_SYNCED: the event's leases were not synchronized on this instance, after a restart, an old
snapshot, a flush, or an event not seen since: no verdict, nothing written) or an array with one verdict per
hold, each an array whose first element is the outcome, in this order of precedence:
  {3}                    REPLAY: the idempotency record matches this request
  {4}                    KEY_REUSED: the idempotency record belongs to a different request
  {1, i, -k, ...}        CONFLICT: seats i, ... (1-based positions among the hold's seats) are leased to
                         others, seats k, ... (given negated) are blocked
  {2}                    HELD_BY_HOLDER: every seat is leased to one other lease of this same holder (none is
                         blocked)
  {7, j, ...}            UNKNOWN_POOL: Redis has no capacity for pools j, ... (1-based pool positions): no verdict
  {6, j, avail, ...}     SOLD_OUT: pools j, ... have fewer units left than asked; avail = capacity - used (>= 0)
  {0}                    ACQUIRED: every seat is leased to the lease value and every pool holds its units for
                         it (a seat or pool entry already of that value counts, once: the same token retried
                         must not lose to itself, nor be counted twice)
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {5} end

local BLOCKED = 'blocked'
local now_ms = nil
local function clock_ms()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

local function verdict(a, k, lease_value, holder_fp, pending_ttl_ms, request_fp, slot_count, pool_count)
  -- a: the index of the hold's first unit count in ARGV, k: of its first KEY.
  local entry_field = 't:' .. lease_value
  local first_pool_key = k + slot_count

  if request_fp ~= '' then
    local recorded = redis.call('GET', KEYS[first_pool_key + 2 * pool_count])
    if recorded then
      if recorded == request_fp then return {3} end
      return {4}
    end
  end

  local result = {1}
  local first_owner = nil
  local same_owner = true
  local any_blocked = false
  for i = 1, slot_count do
    local owner = redis.call('GET', KEYS[k + i - 1])
    if owner == BLOCKED then
      result[#result + 1] = -i
      any_blocked = true
    elseif owner and owner ~= lease_value then
      result[#result + 1] = i
      if first_owner == nil then first_owner = owner elseif owner ~= first_owner then same_owner = false end
    end
  end

  if #result > 1 then
    local every_slot_taken = (#result - 1) == slot_count
    if not any_blocked and every_slot_taken and same_owner
        and string.sub(first_owner, -string.len(holder_fp)) == holder_fp then
      return {2}
    end
    return result
  end

  local unknown = {7}
  local short = {6}
  local to_add = {}
  for j = 1, pool_count do
    local pool = KEYS[first_pool_key + 2 * (j - 1)]
    local expiry = KEYS[first_pool_key + 2 * (j - 1) + 1]
    local quantity = tonumber(ARGV[a + j - 1])
    -- Purge the lapsed entries first: their units are free again.
    local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', clock_ms())
    for _, member in ipairs(lapsed) do
      local field = 't:' .. member
      local taken = redis.call('HGET', pool, field)
      if taken then
        redis.call('HINCRBY', pool, 'used', -tonumber(taken))
        redis.call('HDEL', pool, field)
      end
    end
    if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', expiry, '-inf', clock_ms()) end

    local capacity = redis.call('HGET', pool, 'capacity')
    if not capacity then
      unknown[#unknown + 1] = j
    elseif redis.call('HEXISTS', pool, entry_field) == 0 then
      local available = tonumber(capacity) - tonumber(redis.call('HGET', pool, 'used') or '0')
      if available < quantity then
        short[#short + 1] = j
        short[#short + 1] = math.max(available, 0)
      else
        to_add[#to_add + 1] = j
      end
    end
  end

  if #unknown > 1 then return unknown end
  if #short > 1 then return short end

  for i = 1, slot_count do
    redis.call('SET', KEYS[k + i - 1], lease_value, 'PX', pending_ttl_ms, 'NX')
  end
  for _, j in ipairs(to_add) do
    local pool = KEYS[first_pool_key + 2 * (j - 1)]
    local quantity = tonumber(ARGV[a + j - 1])
    redis.call('HSET', pool, entry_field, quantity)
    redis.call('HINCRBY', pool, 'used', quantity)
    redis.call('ZADD', KEYS[first_pool_key + 2 * (j - 1) + 1], clock_ms() + pending_ttl_ms, lease_value)
  end
  return {0}
end

local verdicts = {}
local a, k = 3, 2
for h = 1, tonumber(ARGV[2]) do
  local request_fp = ARGV[a + 3]
  local slot_count = tonumber(ARGV[a + 4])
  local pool_count = tonumber(ARGV[a + 5])
  verdicts[h] = verdict(a + 6, k, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), request_fp, slot_count, pool_count)
  a = a + 6 + pool_count
  k = k + slot_count + 2 * pool_count
  if request_fp ~= '' then k = k + 1 end
end
return verdicts
