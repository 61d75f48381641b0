-- Contended on-sale: a fixed number of hold requests for random seats of one event, unique holders; each
-- thread sends its share and no more, then says so and stops.
--
-- Args (after wrk's `--`): event id, seats, total requests, threads (wrk's -t).
-- Sends: POST /v1/holds {"event_id": event, "slots": ["S-<seat>"], "holder": "o<thread>-<n>"}; seat in 1..seats.
-- Prints: BENCH_THREAD_DONE once per thread, when the thread has received its share of answers. wrk's main
--         thread sleeps for the whole -d regardless, so the Python side sends it SIGINT once every thread has
--         said so; -d is only a ceiling.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "stats.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local event, seats, quota = "onsale", 1, 0
local sent, answered, signalled = 0, 0, false
-- Before the run wrk calls request() once on its first thread to check the request parses
-- (script_verify_request in wrk.c) and never sends it: that call must not use up the share.
local check_call_pending = false
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

local function signal_done()
  if not signalled then
    signalled = true
    io.write("BENCH_THREAD_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

function init(args)
  event = args[1]
  seats = tonumber(args[2])
  local total, threads = tonumber(args[3]), tonumber(args[4])
  quota = math.floor(total / threads) + ((thread_id <= total % threads) and 1 or 0)
  check_call_pending = thread_id == 1
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
  if check_call_pending then
    check_call_pending = false
    return hold_request(1, 0)
  end
  if sent >= quota then
    -- An empty request parks the connection: wrk writes nothing and waits for an answer that never comes.
    -- Without this, each connection would send one more request after the share was used up.
    if answered >= quota then
      signal_done()
    end
    return ""
  end
  sent = sent + 1
  if position == seats then
    shuffle()
  end
  position = position + 1
  return hold_request(order[position], sent)
end

function on_response(status, headers, body)
  answered = answered + 1
  if answered >= quota then
    signal_done()
  end
end
