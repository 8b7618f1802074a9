-- GET /api/users/me; the bearer token comes from the command line (-H).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "report.lua")
