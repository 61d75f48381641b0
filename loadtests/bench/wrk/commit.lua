-- Commit path: uncontended holds, each on a slot nobody asked for before, so every request commits a hold.
--
-- Args (after wrk's `--`): event id, tag (makes this run's slots differ from an earlier run's, e.g. the
-- warm-up's).
-- Sends: POST /v1/holds {"event_id": event, "slots": ["<tag><thread>-<n>"], "holder": "c<thread>-<n>"};
-- expects 201.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, tag = "commit", "c"
local sent = 0

function init(args)
  event = args[1] or event
  tag = args[2] or tag
end

function request()
  sent = sent + 1
  local body = string.format(
    '{"event_id":"%s","slots":["%s%d-%d"],"holder":"c%d-%d"}', event, tag, thread_id, sent, thread_id, sent
  )
  return wrk.format(nil, "/v1/holds", nil, body)
end
