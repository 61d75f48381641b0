-- Shared by every benchmark script (each loads it with dofile): numbers the threads, counts the statuses
-- each thread receives, and prints the whole run as one JSON line the Python side parses.
--
-- Input:  nothing of its own. A scenario script may define on_response(status, headers, body), called after
--         the status has been counted, and add whole numbers of its own to the thread's `counters` table
--         (e.g. counters.units = (counters.units or 0) + 2).
-- Output: on stdout, once, when wrk is done:
--           BENCH_JSON {"requests": n, "duration_us": n, "rps": x, "latency_us": {"p50", "p90", "p99", "max",
--                       "mean"}, "statuses": {"409": n, ...}, "errors": {"connect", "read", "write",
--                       "status", "timeout"}, "counters": {"units": n, ...}}
--         requests is wrk's own count of completed responses; the statuses must add up to it. counters are
--         summed over the threads.

-- setup() runs in wrk's main Lua state, once per thread, before that thread's init(): it hands each thread
-- its number (1..threads) as the global thread_id, and keeps the thread so that done() can read its counts.
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

-- Per thread (every thread has a Lua state of its own): status code -> responses received; the script's own
-- counters.
statuses = {}
counters = {}

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if on_response then
    on_response(status, headers, body)
  end
end

-- Sums a per-thread table over the threads, as JSON members: "key":n,...
local function merged(name, key_format)
  local sums = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get(name) or {}) do
      sums[key] = (sums[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(sums) do
    parts[#parts + 1] = string.format(key_format .. ":%d", key, count)
  end
  return table.concat(parts, ",")
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"rps":%.1f,' ..
      '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,"mean":%.1f},' ..
      '"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"counters":{%s}}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    merged("statuses", '"%d"'),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    merged("counters", '"%s"')
  ))
  io.flush()
end
