-- Availability read storm: GET an event's availability (public; the gateway answers from a cache that lags
-- commits by up to 1 s), as every visitor of an on-sale page does.
--
-- Args (after wrk's `--`): event id.
-- Sends: GET /v1/events/<event>/availability; expects 200.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

function init(args)
  wrk.path = "/v1/events/" .. (args[1] or "ga-reads") .. "/availability"
end
