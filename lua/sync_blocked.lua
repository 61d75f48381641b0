--[[ sync_blocked: block and unblock seats of one event, as Postgres's inventory says (the reconciler).

KEYS[1]                   the event's blocked set (the seat ids whose slot key holds 'blocked')
KEYS[2 .. 1+b]            slot keys of the seats to block
KEYS[2+b .. 1+b+u]        slot keys of the seats to unblock
ARGV[1]                   b, the number of seats to block
ARGV[2]                   u, the number of seats to unblock
ARGV[3 .. 2+b]            seat ids to block, in the order of their keys
ARGV[3+b .. 2+b+u]        seat ids to unblock, in the order of their keys

Blocking sets the slot key to 'blocked' (keys.BLOCKED_LEASE_VALUE) with no TTL, over any lease there (Postgres
refuses that hold's request anyway), and adds the seat to the set. Unblocking deletes the slot key only if it
still holds 'blocked' (a lease taken since is kept), and removes the seat from the set.

Returns the number of seats whose state changed (slot key or set membership).
]]
local block_count = tonumber(ARGV[1])
local unblock_count = tonumber(ARGV[2])
local blocked_set = KEYS[1]
local BLOCKED = 'blocked'

local changed = 0
for i = 1, block_count do
  local slot = KEYS[1 + i]
  local set_now = 0
  if redis.call('GET', slot) ~= BLOCKED then
    redis.call('SET', slot, BLOCKED)
    set_now = 1
  end
  if redis.call('SADD', blocked_set, ARGV[2 + i]) == 1 or set_now == 1 then changed = changed + 1 end
end

for i = 1, unblock_count do
  local slot = KEYS[1 + block_count + i]
  local deleted = 0
  if redis.call('GET', slot) == BLOCKED then
    redis.call('DEL', slot)
    deleted = 1
  end
  if redis.call('SREM', blocked_set, ARGV[2 + block_count + i]) == 1 or deleted == 1 then
    changed = changed + 1
  end
end
return changed
