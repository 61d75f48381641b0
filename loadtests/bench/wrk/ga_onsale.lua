-- General-admission on-sale: a fixed number of hold requests for 1 to 4 units (uniformly) of one pool, unique
-- holders; each thread sends its share and no more, then says so and stops (quota.lua).
--
-- Args (after wrk's `--`): event id, pool id, total requests, threads (wrk's -t).
-- Sends: POST /v1/holds {"holder": "g<thread>-<n>", "items": [{"event_id": event, "pool_id": pool,
--        "quantity": q}]}; q in 1..4.
-- Counts: counters.units, the units of every 201 (its items' quantities).
-- Prints: BENCH_THREAD_DONE once per thread (quota.lua).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")
dofile(here .. "quota.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, pool = "ga-onsale", "ga"

function init(args)
  event, pool = args[1], args[2]
  quota_init(tonumber(args[3]), tonumber(args[4]))
  math.randomseed(os.time() * 1000 + thread_id)
end

function request()
  return quota_request(function(n)
    local body = string.format(
      '{"holder":"g%d-%d","items":[{"event_id":"%s","pool_id":"%s","quantity":%d}]}',
      thread_id, n, event, pool, math.random(4)
    )
    return wrk.format(nil, "/v1/holds", nil, body)
  end)
end

function on_response(status, headers, body)
  if status == 201 then
    for quantity in body:gmatch('"quantity":%s*(%d+)') do
      counters.units = (counters.units or 0) + tonumber(quantity)
    end
  end
  quota_response()
end
