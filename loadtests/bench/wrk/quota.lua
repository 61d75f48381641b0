-- Shared by the scripts that send a fixed number of requests (each loads it with dofile after stats.lua):
-- each thread sends its share of the total and no more, then says so and stops.
--
-- Input:  quota_init(total, threads) from the script's init(args); quota_request(make) from its request(),
--         where make(n) returns the thread's n-th request (1-based); quota_response() from its
--         on_response().
-- Output: BENCH_THREAD_DONE on stdout once per thread, when the thread has received its share of answers.
--         wrk's main thread sleeps for the whole -d regardless, so the Python side sends it SIGINT once every
--         thread has said so; -d is only a ceiling.

local quota, sent, answered, signalled = 0, 0, 0, false
-- Before the run wrk calls request() once on its first thread to check the request parses
-- (script_verify_request in wrk.c) and never sends it: that call must not use up the share.
local check_call_pending = false

local function signal_done()
  if not signalled then
    signalled = true
    io.write("BENCH_THREAD_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

function quota_init(total, threads)
  quota = math.floor(total / threads) + ((thread_id <= total % threads) and 1 or 0)
  check_call_pending = thread_id == 1
end

function quota_request(make)
  if check_call_pending then
    check_call_pending = false
    return make(0)
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
  return make(sent)
end

function quota_response()
  answered = answered + 1
  if answered >= quota then
    signal_done()
  end
end
