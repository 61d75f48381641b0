--[[ acquire: take a pending lease on every slot of a new hold, or on none of them.

KEYS[1..n]  slot lease keys of one event, sorted by slot id
KEYS[n+1]   the event's sync marker (holds the run_id of the instance it was last synchronized on)
KEYS[n+2]   the request's idempotency record key, present only when ARGV[4] ~= ''
ARGV[1]     lease value: "<token>:<holder fingerprint>"
ARGV[2]     holder fingerprint (the suffix of every lease value of this holder)
ARGV[3]     pending lease TTL, milliseconds (long enough for one Postgres commit)
ARGV[4]     request fingerprint of an Idempotency-Key request, or ''
ARGV[5]     n, the number of slot keys
ARGV[6]     run_id of the Redis instance the caller checked on its connection

Returns an array whose first element is the outcome:
  {0}              ACQUIRED: every slot is leased to ARGV[1] (a slot already leased to ARGV[1] counts:
                   the same token retried must not lose to itself)
  {1, i, j, ...}   CONFLICT: slots i, j, ... (1-based positions in KEYS) are leased to others
  {2}              HELD_BY_HOLDER: every slot is leased to one other lease of this same holder
  {3}              REPLAY: the idempotency record matches this request
  {4}              KEY_REUSED: the idempotency record belongs to a different request
  {5}              NOT_SYNCED: the event's leases were not synchronized on this instance (a restart, an old
                   snapshot, a flush, or an event not seen since): no verdict, nothing written
]]
local lease_value = ARGV[1]
local holder_fp = ARGV[2]
local pending_ttl_ms = tonumber(ARGV[3])
local request_fp = ARGV[4]
local slot_count = tonumber(ARGV[5])
local run_id = ARGV[6]

if redis.call('GET', KEYS[slot_count + 1]) ~= run_id then return {5} end

if request_fp ~= '' then
  local recorded = redis.call('GET', KEYS[slot_count + 2])
  if recorded then
    if recorded == request_fp then return {3} end
    return {4}
  end
end

local result = {1}
local first_owner = nil
local same_owner = true
for i = 1, slot_count do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= lease_value then
    result[#result + 1] = i
    if first_owner == nil then first_owner = owner elseif owner ~= first_owner then same_owner = false end
  end
end

if #result > 1 then
  local every_slot_taken = (#result - 1) == slot_count
  if every_slot_taken and same_owner and string.sub(first_owner, -string.len(holder_fp)) == holder_fp then
    return {2}
  end
  return result
end

for i = 1, slot_count do
  redis.call('SET', KEYS[i], lease_value, 'PX', pending_ttl_ms, 'NX')
end
return {0}
