-- POST /api/auth/register with a new username on every request: RUN-tTHREAD-nCOUNTER, so
-- threads never collide and no two runs share a name.
-- Arguments after --: FROM TO RUN PASSWORD: the counting window in Unix seconds (see
-- report.lua), a run id and the password.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local prefix, password
local n = 0

function init(args)
  count_window(args[1], args[2])
  prefix = string.format("%s-t%d", args[3], thread_id)
  password = args[4]
end

function request()
  next_client()
  n = n + 1
  local name = string.format("%s-n%d", prefix, n)
  return wrk.format(nil, nil, nil, string.format(
    '{"username":"%s","first_name":"Bench","last_name":"Register","email":"%s@bench.example","password":"%s"}',
    name, name, password))
end
