-- Contended on-sale: a fixed number of hold requests for random seats of one event, unique holders; each
-- thread sends its share and no more, then says so and stops (quota.lua).
--
-- Args (after wrk's `--`): event id, seats, total requests, threads (wrk's -t).
-- Sends: POST /v1/holds {"event_id": event, "slots": ["S-<seat>"], "holder": "o<thread>-<n>"}; seat in 1..seats.
-- Prints: BENCH_THREAD_DONE once per thread (quota.lua).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")
dofile(here .. "quota.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, seats = "onsale", 1
-- Seats are taken from a random permutation, reshuffled after each pass: random order, yet every seat is
-- asked for, so "every seat sold" does not depend on luck even in a tiny run.
local order, position = {}, 0

local function shuffle()
  for i = seats, 2, -1 do
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  position = 0
end

function init(args)
  event = args[1]
  seats = tonumber(args[2])
  quota_init(tonumber(args[3]), tonumber(args[4]))
  math.randomseed(os.time() * 1000 + thread_id)
  for i = 1, seats do
    order[i] = i
  end
  shuffle()
end

local function hold_request(seat, n)
  local body = string.format('{"event_id":"%s","slots":["S-%d"],"holder":"o%d-%d"}', event, seat, thread_id, n)
  return wrk.format(nil, "/v1/holds", nil, body)
end

function request()
  return quota_request(function(n)
    if n == 0 then
      return hold_request(1, 0) -- wrk's check call, never sent
    end
    if position == seats then
      shuffle()
    end
    position = position + 1
    return hold_request(order[position], n)
  end)
end

function on_response(status, headers, body)
  quota_response()
end
