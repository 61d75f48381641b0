-- wrk body script for the rejection path: every request asks for the same slot with a new holder.
-- Hold the slot once first, then:  wrk -t2 -c64 -d10s --latency -s loadtests/wrk/reject.lua http://127.0.0.1:8000
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/holds", nil, '{"event_id":"bench","slots":["A-1"],"holder":"u' .. counter .. '"}')
end
