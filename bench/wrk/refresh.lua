-- POST /api/auth/refresh. Each token works once (it rotates), so each thread keeps a queue of
-- live refresh tokens: every request takes one, every reply gives back its successor. The
-- queues start with the seeded tokens bench-refresh-1 .. bench-refresh-TOKENS, split between
-- the threads, TOKENS / THREADS each, which must be at least the connections of a thread.
-- Arguments after --: FROM TO TOKENS THREADS: the counting window in Unix seconds (see
-- report.lua), the number of seeded tokens and wrk's -t.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local queue, first, last = {}, 1, 0
local function push(token)
  last = last + 1
  queue[last] = token
end

local previous -- reused when the queue is empty, which only failed refreshes cause
local function pop()
  if first <= last then
    previous = queue[first]
    queue[first] = nil
    first = first + 1
  end
  return previous
end

function init(args)
  count_window(args[1], args[2])
  local per_thread = math.floor(tonumber(args[3]) / tonumber(args[4]))
  for i = (thread_id - 1) * per_thread + 1, thread_id * per_thread do
    push("bench-refresh-" .. i)
  end
  local counting = response
  function response(status, headers, body)
    counting(status, headers, body)
    local token = status == 200 and body:match('"refresh_token":"([^"]+)"')
    if token then
      push(token)
    end
  end
end

function request()
  next_client()
  return wrk.format(nil, nil, nil, '{"refresh_token":"' .. (pop() or "none") .. '"}')
end
