--[[ acquire: take a pending lease on every seat and the units of every pool of a new hold, or nothing.

KEYS[1..n]            seat lease keys of one event, sorted by seat id
KEYS[n+1]             the event's sync marker (holds the run_id of the instance it was last synchronized on)
KEYS[n+2 .. n+1+2m]   for each pool j = 1..m: its hash (capacity, used, 't:'..lease value -> quantity), then
                      its expiry sorted set (lease value scored by expiry, milliseconds by Redis's clock)
KEYS[n+2+2m]          the request's idempotency record key, present only when ARGV[4] ~= ''
ARGV[1]               lease value: "<token>:<holder fingerprint>"
ARGV[2]               holder fingerprint (the suffix of every lease value of this holder)
ARGV[3]               pending TTL, milliseconds (long enough for one Postgres commit), of seats and units
ARGV[4]               request fingerprint of an Idempotency-Key request, or ''
ARGV[5]               n, the number of seat keys
ARGV[6]               run_id of the Redis instance the caller checked on its connection
ARGV[7]               m, the number of pools (may be 0)
ARGV[8 .. 7+m]        units taken from each pool (>= 1)

A seat whose key holds 'blocked' (keys.BLOCKED_LEASE_VALUE) is blocked. Before the pools are judged, their
entries that lapsed are purged (units back, no sweeper needed); that purge is the only write of any outcome
but ACQUIRED.

Returns an array whose first element is the outcome, in this order of precedence:
  {5}                    NOT_SYNCED: the event's leases were not synchronized on this instance (a restart, an
                         old snapshot, a flush, or an event not seen since): no verdict, nothing written
  {3}                    REPLAY: the idempotency record matches this request
  {4}                    KEY_REUSED: the idempotency record belongs to a different request
  {1, i, -k, ...}        CONFLICT: seats i, ... (1-based positions in KEYS) are leased to others, seats
                         k, ... (given negated) are blocked
  {2}                    HELD_BY_HOLDER: every seat is leased to one other lease of this same holder (none is
                         blocked)
  {7, j, ...}            UNKNOWN_POOL: Redis has no capacity for pools j, ... (1-based pool positions): no verdict
  {6, j, avail, ...}     SOLD_OUT: pools j, ... have fewer units left than asked; avail = capacity - used (>= 0)
  {0}                    ACQUIRED: every seat is leased to ARGV[1] and every pool holds its units for ARGV[1]
                         (a seat or pool entry already of ARGV[1] counts, once: the same token retried must not
                         lose to itself, nor be counted twice)
]]
local lease_value = ARGV[1]
local holder_fp = ARGV[2]
local pending_ttl_ms = tonumber(ARGV[3])
local request_fp = ARGV[4]
local slot_count = tonumber(ARGV[5])
local run_id = ARGV[6]
local pool_count = tonumber(ARGV[7])
local BLOCKED = 'blocked'
local entry_field = 't:' .. lease_value
local first_pool_key = slot_count + 2

if redis.call('GET', KEYS[slot_count + 1]) ~= run_id then return {5} end

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
  local owner = redis.call('GET', KEYS[i])
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

local now_ms = 0
if pool_count > 0 then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local unknown = {7}
local short = {6}
local to_add = {}
for j = 1, pool_count do
  local pool = KEYS[first_pool_key + 2 * (j - 1)]
  local expiry = KEYS[first_pool_key + 2 * (j - 1) + 1]
  local quantity = tonumber(ARGV[7 + j])
  -- Purge the lapsed entries first: their units are free again.
  local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', now_ms)
  for _, member in ipairs(lapsed) do
    local field = 't:' .. member
    local taken = redis.call('HGET', pool, field)
    if taken then
      redis.call('HINCRBY', pool, 'used', -tonumber(taken))
      redis.call('HDEL', pool, field)
    end
  end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now_ms) end

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
  redis.call('SET', KEYS[i], lease_value, 'PX', pending_ttl_ms, 'NX')
end
for _, j in ipairs(to_add) do
  local pool = KEYS[first_pool_key + 2 * (j - 1)]
  local quantity = tonumber(ARGV[7 + j])
  redis.call('HSET', pool, entry_field, quantity)
  redis.call('HINCRBY', pool, 'used', quantity)
  redis.call('ZADD', KEYS[first_pool_key + 2 * (j - 1) + 1], now_ms + pending_ttl_ms, lease_value)
end
return {0}
