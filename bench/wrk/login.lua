-- POST /api/auth/login as the seeded users in turn, all with the password of the bench seed.
-- Arguments after --: FROM TO PASSWORD USERS: the counting window in Unix seconds (see
-- report.lua), the password and the number of seeded users (user000001 and on).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local password, users
local n = 0

function init(args)
  count_window(args[1], args[2])
  password, users = args[3], tonumber(args[4])
  n = thread_id * 7919 % users -- threads start at different users
end

function request()
  next_client()
  n = n % users + 1
  return wrk.format(nil, nil, nil, string.format('{"username":"user%06d","password":"%s"}', n, password))
end
