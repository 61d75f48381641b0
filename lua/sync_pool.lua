--[[ sync_pool: rebuild one general-admission pool from Postgres (the reconciler; called in batches).

KEYS[1]             the pool's hash (capacity, used, 't:'..lease value -> quantity)
KEYS[2]             the pool's expiry sorted set (lease value scored by expiry, milliseconds by Redis's clock)
ARGV[1]             the pool's capacity, units
ARGV[2 ..]          triples, one per live hold taking units: lease value, quantity (units), TTL in
                    milliseconds from now ('-1': confirmed, never lapses)

Sets the capacity, purges the lapsed entries, adds each listed hold whose entry is missing (an entry already
there is kept as it is: it may be a request in flight, or newer than the caller's read of Postgres), then
recomputes `used` as the sum of every entry's quantity. The caller sends at most ~1000 triples per call.

Returns `used`, units.
]]
local capacity = tonumber(ARGV[1])
local pool = KEYS[1]
local expiry = KEYS[2]

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('HSET', pool, 'capacity', capacity)

local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', now_ms)
for _, member in ipairs(lapsed) do
  redis.call('HDEL', pool, 't:' .. member)
end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now_ms) end

for i = 2, #ARGV, 3 do
  local lease_value = ARGV[i]
  local quantity = tonumber(ARGV[i + 1])
  local ttl_ms = tonumber(ARGV[i + 2])
  local field = 't:' .. lease_value
  if redis.call('HEXISTS', pool, field) == 0 then
    local score = '+inf'
    if ttl_ms ~= -1 then score = now_ms + ttl_ms end
    redis.call('HSET', pool, field, quantity)
    redis.call('ZADD', expiry, score, lease_value)
  end
end

local used = 0
local fields = redis.call('HGETALL', pool)
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 't:' then used = used + tonumber(fields[i + 1]) end
end
redis.call('HSET', pool, 'used', used)
return used
