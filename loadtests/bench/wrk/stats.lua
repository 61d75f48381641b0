-- Shared by every benchmark script (each loads it with dofile): numbers the threads, counts the statuses
-- each thread receives, and prints the whole run as one JSON line the Python side parses.
--
-- Input:  nothing of its own. A scenario script may define on_response(status, headers, body), called after
--         the status has been counted.
-- Output: on stdout, once, when wrk is done:
--           BENCH_JSON {"requests": n, "duration_us": n, "rps": x, "latency_us": {"p50", "p90", "p99", "max",
--                       "mean"}, "statuses": {"409": n, ...}, "errors": {"connect", "read", "write",
--                       "status", "timeout"}}
--         requests is wrk's own count of completed responses; the statuses must add up to it.

-- setup() runs in wrk's main Lua state, once per thread, before that thread's init(): it hands each thread
-- its number (1..threads) as the global thread_id, and keeps the thread so that done() can read its counts.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Per thread (every thread has a Lua state of its own): status code -> responses received.
statuses = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if on_response then
    on_response(status, headers, body)
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%d":%d', status, count)
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"rps":%.1f,' ..
      '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,"mean":%.1f},' ..
      '"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ","),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout
  ))
  io.flush()
end
