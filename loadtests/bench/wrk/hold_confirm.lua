-- Hold + confirm: each new hold (on a fresh slot) is followed by its confirm. wrk has no notion of a
-- connection in request(), so each thread keeps the holds it got back (201) and confirms one whenever it has
-- one waiting, else asks for a new hold: about every other request is a confirm.
--
-- Args (after wrk's `--`): event id, tag (as in commit.lua).
-- Sends: POST /v1/holds {"event_id": event, "slots": ["<tag><thread>-<n>"], "holder": "h<thread>-<n>"}
--        (expects 201), then POST /v1/holds/<id>/confirm {"holder": ...} (expects 200: one pair).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, tag = "confirm", "h"
local sent = 0
local waiting = {} -- holds to confirm: {id, holder}

function init(args)
  event = args[1] or event
  tag = args[2] or tag
end

function request()
  local hold = table.remove(waiting)
  if hold then
    return wrk.format(nil, "/v1/holds/" .. hold[1] .. "/confirm", nil, '{"holder":"' .. hold[2] .. '"}')
  end
  sent = sent + 1
  local body = string.format(
    '{"event_id":"%s","slots":["%s%d-%d"],"holder":"h%d-%d"}', event, tag, thread_id, sent, thread_id, sent
  )
  return wrk.format(nil, "/v1/holds", nil, body)
end

function on_response(status, headers, body)
  if status == 201 then
    local id, holder = body:match('"id":"([^"]+)"'), body:match('"holder":"([^"]+)"')
    if id and holder then
      waiting[#waiting + 1] = { id, holder }
    end
  end
end
