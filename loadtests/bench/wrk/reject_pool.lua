-- Sold-out pool storm: every request asks for one unit of a pool the benchmark has sold out beforehand,
-- each time as a new holder (the seat storm of reject.lua, for general admission).
--
-- Args (after wrk's `--`): event id, pool id.
-- Sends: POST /v1/holds {"holder": "r<thread>-<n>", "items": [{"event_id": event, "pool_id": pool,
--        "quantity": 1}]}; expects 409.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, pool = "ga-storm", "ga"
local sent = 0

function init(args)
  event = args[1] or event
  pool = args[2] or pool
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"holder":"r%d-%d","items":[{"event_id":"%s","pool_id":"%s","quantity":1}]}', thread_id, sent, event, pool
  )
  return wrk.format(nil, "/v1/holds", nil, body)
end
