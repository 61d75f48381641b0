-- Warm-up that touches neither Redis nor Postgres: a hold request without slots, refused (422) by body
-- validation. Used before the on-sale, whose Postgres transactions are counted: a warm-up that reached
-- Postgres would leave transactions the statistics report only seconds later, inside the count.
--
-- Args: none. Sends: POST /v1/holds {"event_id": "warm-up", "holder": "w"}; expects 422.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.path = "/v1/holds"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event_id":"warm-up","holder":"w"}'
