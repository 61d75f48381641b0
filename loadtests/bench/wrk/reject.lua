-- Rejection path: every request asks for the same slot, which the benchmark has held beforehand, each time
-- as a new holder (the holder of the hold would get its own hold back: 200, not 409).
--
-- Args (after wrk's `--`): event id, slot id.
-- Sends: POST /v1/holds {"event_id": event, "slots": [slot], "holder": "r<thread>-<n>"}; expects 409.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, slot = "bench", "A-1"
local sent = 0

function init(args)
  event = args[1] or event
  slot = args[2] or slot
end

function request()
  sent = sent + 1
  local body = string.format('{"event_id":"%s","slots":["%s"],"holder":"r%d-%d"}', event, slot, thread_id, sent)
  return wrk.format(nil, "/v1/holds", nil, body)
end
