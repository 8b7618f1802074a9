-- POST /refresh of bench/baseline: one transaction of a refresh's shape on a seeded session.
-- Each thread takes its own share of the seeded sessions in turn, so that no two requests in
-- flight lock the same one, as the refresh scenario's queues of tokens do.
-- Arguments after --: FROM TO FIRST SESSIONS THREADS: the counting window in Unix seconds (see
-- report.lua), the first seeded session id, the number of seeded sessions and wrk's -t.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local first, count, n = 0, 0, 0

function init(args)
  count_window(args[1], args[2])
  count = math.floor(tonumber(args[4]) / tonumber(args[5]))
  first = tonumber(args[3]) + (thread_id - 1) * count
end

function request()
  n = (n + 1) % count
  return wrk.format(nil, nil, nil, string.format('{"session_id":%d}', first + n))
end
