-- Shared by every wrk script of the harness (loaded with dofile).
--
-- At the end, done prints one WRK_RESULT line for bench/run.sh: wrk's own figures (errors are
-- socket errors plus replies that are not 2xx or 3xx) and, for scripts that call
-- count_window, the replies that arrived within the window and how many of those failed.

local threads = {}

-- setup runs in wrk's main Lua state, once per thread, before the thread's init.
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- next_client gives the next request a client address of its own in X-Forwarded-For (the
-- server trusts it from 127.0.0.1, as behind a load balancer): the per-address limit on the
-- authentication endpoints is then paid, as in production, without one address's limit
-- throttling the whole benchmark. 65,536 addresses per thread, in turn.
local clients = 0
function next_client()
  clients = clients + 1
  wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", thread_id % 256, math.floor(clients / 256) % 256, clients % 256)
end

-- count_window makes the thread count the replies that arrive within [from, to), in Unix
-- seconds. A run that starts with a warm-up and ends after the window is then measured over
-- exactly to - from seconds with every connection busy from the first to the last of them,
-- which a slow request (a bcrypt comparison) needs: a plain wrk run starts with every
-- connection idle and loses the requests still in flight at its end.
function count_window(from, to)
  from, to = tonumber(from), tonumber(to)
  counted, failed = 0, 0
  function response(status, headers, body)
    local now = os.time()
    if now >= from and now < to then
      counted = counted + 1
      if status >= 400 then
        failed = failed + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local line = string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d errors=%d socket_errors=%d",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    socket_errors + e.status, socket_errors)
  if threads[1] and threads[1]:get("counted") then
    local counted, failed = 0, 0
    for _, thread in ipairs(threads) do
      counted = counted + thread:get("counted")
      failed = failed + thread:get("failed")
    end
    line = line .. string.format(" window_requests=%d window_errors=%d", counted, failed)
  end
  io.write(line .. "\n")
end
