#!/usr/bin/env bash
# bench/run.sh: the load tests of `make bench` (issue 5). `make bench` prepares PostgreSQL and
# .env (scripts/setup.sh) and builds ./usermgmt first, then runs this script, which:
#   1. installs the pinned load generators (bench/install.sh: wrk from Debian, vegeta from the
#      Go module proxy into bench/.bin);
#   2. runs the Go benchmarks (bench_test.go); BenchmarkBcryptCompare, run again just before
#      login and register, gives their bcrypt bound: cores / time of one comparison at cost 12;
#   3. creates a fresh database usermgmt_bench, lets the server apply the schema, seeds 100,000
#      users with set-based SQL (bench/seed.sql) and starts the server with production settings;
#   4. runs each scenario of issue 5 for BENCH_DURATION after a BENCH_WARMUP, prints one table
#      and writes it, with the machine, versions and exact commands, to bench/results.md.
# The server is stopped, background load killed and the bench database dropped on any exit.
# Nothing fails on a missed target; the table says pass or miss.
#
# Settings (environment):
#   BENCH_DURATION=10s     measured time of each scenario (seconds: 10s, 30s, 1m)
#   BENCH_WARMUP=2s        warm-up before each scenario, not measured
#   BENCH_USERS=100000     seeded users
#   BENCH_RATE=2000        fixed rate of the /api/users/me latency runs (scenarios 1 and 3), req/s
#   BENCH_ADMIN_RATE=20    fixed rate of the admin list runs (scenario 5), req/s
#   BENCH_KEEP_DB=1        keep usermgmt_bench after the run, to look at it
#   BENCH_PPROF=127.0.0.1:6061  serve the server's profiles there and save an execution trace of
#                          scenario 3 to bench/out/isolation.trace (go tool trace)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

seconds() { # seconds 10s|2m|15: the number of seconds, for arithmetic and for the tools
  case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

duration=$(seconds "${BENCH_DURATION:-10s}")
pprof=${BENCH_PPROF:-}
warmup=$(seconds "${BENCH_WARMUP:-2s}")
users=${BENCH_USERS:-100000}
refresh_tokens=1024 # seeded refresh sessions, shared out between wrk's threads (scenario 4)
rate=${BENCH_RATE:-2000}
admin_rate=${BENCH_ADMIN_RATE:-20}
[[ $duration =~ ^[1-9][0-9]*$ && $warmup =~ ^[0-9]+$ ]] || die "BENCH_DURATION and BENCH_WARMUP must be seconds, like 10s"

cores=$(nproc)
bcrypt_cost=12
connections=64                   # scenario 1, as issue 5 says
login_connections=$((2 * cores)) # every core busy in bcrypt with one request queued behind it
threads=$cores
password=bench-password
# bcrypt of $password at cost 12, made once (hashing 100,000 passwords at cost 12 takes hours):
#   bcrypt.GenerateFromPassword([]byte("bench-password"), 12)
password_hash='$2a$12$58DbZlF9G43wpRdXrUfRA.NTh971ALVLAMIMqQhlYXUT47fzZdoY2'
bench_db=usermgmt_bench
out=bench/out
results=bench/results.md
bin=./usermgmt
vegeta=bench/.bin/vegeta

[ -x "$bin" ] || die "$bin is missing: run \`make bench\`, which builds it"
bench/install.sh
mkdir -p "$out"
rm -f "$out"/*

# The database of .env (or the environment), as scripts/setup.sh wrote it; the bench database
# sits next to it, reached by the same role, which may CREATE DATABASE.
# shellcheck source=scripts/envfile.sh
. scripts/envfile.sh
admin_url=${DATABASE_URL:-$(env_value DATABASE_URL)}
[[ $admin_url == postgres://* || $admin_url == postgresql://* ]] ||
  die "DATABASE_URL must be a postgres:// URL (run \`make setup\`)"
url_base=${admin_url%%\?*}
bench_url="${url_base%/*}/$bench_db${admin_url#"$url_base"}"

server_pid=
flood_pid=
cleanup() {
  local status=$?
  [ -z "$flood_pid" ] || kill "$flood_pid" 2>/dev/null || true
  stop_server
  if [ -z "${BENCH_KEEP_DB:-}" ]; then
    psql "$admin_url" -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null 2>&1 ||
      log "could not drop $bench_db"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# start_server starts the server with production settings on a free port; it sets server_pid,
# addr (host:port) and ready_ms (from process start to the first 200 from /healthz).
start_server() {
  local log_file=$out/server-$1.log start deadline
  start=$(now_ms)
  env -i PATH="$PATH" DATABASE_URL="$bench_url" JWT_SECRET_KEY="$jwt_secret" BCRYPT_COST=$bcrypt_cost \
    MAIL_BACKEND=log TRUSTED_PROXIES=127.0.0.1/32 ADDR=127.0.0.1:0 "$bin" -env-file= ${pprof:+-pprof "$pprof"} >"$log_file" 2>&1 &
  server_pid=$!
  addr=
  deadline=$((start + 30000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited: $(tail -n 5 "$log_file")"
    [ -n "$addr" ] || addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$log_file")
    if [ -n "$addr" ] && curl -fs -o /dev/null --max-time 1 "http://$addr/healthz"; then
      ready_ms=$(($(now_ms) - start))
      return
    fi
    sleep 0.005
  done
  die "the server was not ready in 30 s: $(tail -n 5 "$log_file")"
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

rss_kb() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$server_pid/status"; }

# Each run's figures, by row name: req/s, p50, p99 and max in ms, errors.
declare -A RPS P50 P99 MAX ERRORS
commands=()

# quote ARG...: the arguments as they would be typed, double-quoted where the shell needs it.
quote() {
  local arg words=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then words+=("$arg"); else words+=("\"$arg\""); fi
  done
  echo "${words[*]}"
}

# record COMMAND keeps a command line for results.md, with the tokens and the server's address
# replaced by variables.
record() {
  local cmd=$1
  cmd=${cmd//"$user_token"/\$USER_TOKEN}
  cmd=${cmd//"$admin_token"/\$ADMIN_TOKEN}
  commands+=("${cmd//"$addr"/\$SERVER}")
}

# wrk_run ROW DURATION WRK-ARGS...: runs wrk, keeps its output and, with a ROW, its figures
# (read from the WRK_RESULT line that bench/wrk/report.lua prints). For a script that counts
# replies within a window (login, refresh, register), req/s and errors are those of the window,
# which lasts BENCH_DURATION; the latencies are of the whole run.
wrk_run() {
  local row=$1 secs=$2 file
  shift 2
  file=$out/wrk-${row:-warmup}.txt
  [ -z "$row" ] || record "wrk $(quote -d "${secs}s" "$@")"
  wrk -d "${secs}s" "$@" >"$file" 2>&1 || die "wrk failed: $(tail -n 3 "$file")"
  [ -n "$row" ] || return 0
  local line
  line=$(grep '^WRK_RESULT' "$file") || die "no result from wrk: $(tail -n 3 "$file")"
  local requests duration_us p50_us p99_us max_us errors socket_errors window_requests= window_errors=
  eval "${line#WRK_RESULT }"
  RPS[$row]=$(awk -v n="$requests" -v us="$duration_us" 'BEGIN { printf "%.1f", n / (us / 1e6) }')
  P50[$row]=$(awk -v v="$p50_us" 'BEGIN { printf "%.2f", v / 1000 }')
  P99[$row]=$(awk -v v="$p99_us" 'BEGIN { printf "%.2f", v / 1000 }')
  MAX[$row]=$(awk -v v="$max_us" 'BEGIN { printf "%.2f", v / 1000 }')
  ERRORS[$row]=$errors
  if [ -n "$window_requests" ]; then
    RPS[$row]=$(awk -v n="$window_requests" -v s="$duration" 'BEGIN { printf "%.2f", n / s }')
    ERRORS[$row]=$((window_errors + socket_errors))
  fi
}

# set_window sets the counting window of a login, refresh or register run: the warm-up and then
# BENCH_DURATION, in whole Unix seconds (window_from, window_to), and the length of the wrk run
# that holds it (window_secs).
set_window() {
  local now
  now=$(date +%s)
  window_from=$((now + 1 + warmup))
  window_to=$((window_from + duration))
  window_secs=$((window_to - now + 1))
}

# vegeta_run ROW DURATION RATE URL [TOKEN]: a fixed-rate GET run; with a ROW, its figures.
# req/s is vegeta's throughput (successful replies per second); errors are the replies that
# were not 2xx, transport errors included.
vegeta_run() {
  local row=$1 secs=$2 rps=$3 url=$4 token=${5:-} file
  file=$out/vegeta-${row:-warmup}
  local args=(attack -rate="$rps/s" -duration="${secs}s" -timeout=10s)
  [ -z "$token" ] || args+=(-header "Authorization: Bearer $token")
  [ -z "$row" ] || record "echo \"GET $url\" | vegeta $(quote "${args[@]}") | vegeta report -type=json"
  echo "GET $url" | "$vegeta" "${args[@]}" >"$file.bin" || die "vegeta failed"
  [ -n "$row" ] || return 0
  "$vegeta" report -type=json "$file.bin" >"$file.json"
  RPS[$row]=$(jq -r '.throughput * 10 | round / 10' "$file.json")
  P50[$row]=$(jq -r '.latencies["50th"] / 1e4 | round / 100' "$file.json")
  P99[$row]=$(jq -r '.latencies["99th"] / 1e4 | round / 100' "$file.json")
  MAX[$row]=$(jq -r '.latencies.max / 1e4 | round / 100' "$file.json")
  ERRORS[$row]=$(jq -r '[.status_codes | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0' "$file.json")
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Go benchmarks (before the server starts, so they have the machine to themselves) --------
log "Go benchmarks (go test -bench)"
go_bench_cmd="BCRYPT_COST=$bcrypt_cost go test -count=1 -run '^\$' -bench . -benchmem ."
BCRYPT_COST=$bcrypt_cost "${GO:-go}" test -count=1 -run '^$' -bench . -benchmem . | tee "$out/go-bench.txt" >&2

# bcrypt_bound FILE: reads BenchmarkBcryptCompare from go test's output; sets bcrypt_ms (one
# comparison) and bound (cores / that, in req/s).
bcrypt_bound() {
  local ns
  ns=$(awk '$1 ~ /^BenchmarkBcryptCompare/ { for (i = 2; i < NF; i++) if ($(i + 1) == "ns/op") print $i }' "$1")
  [ -n "$ns" ] || die "BenchmarkBcryptCompare gave no ns/op in $1"
  bcrypt_ms=$(awk -v ns="$ns" 'BEGIN { printf "%.1f", ns / 1e6 }')
  bound=$(awk -v c="$cores" -v ns="$ns" 'BEGIN { printf "%.2f", c / (ns / 1e9) }')
  log "one bcrypt comparison at cost $bcrypt_cost: $bcrypt_ms ms; bound $bound req/s on $cores cores"
}
bcrypt_bound "$out/go-bench.txt"
bcrypt_times=("before the scenarios $bcrypt_ms ms ($bound req/s)")

# time_bcrypt SCENARIO: times bcrypt again just before a bcrypt-bound scenario, with the server
# idle, so that the scenario's ratio compares figures taken under the same conditions.
bcrypt_cmd="BCRYPT_COST=$bcrypt_cost go test -count=1 -run '^\$' -bench '^BenchmarkBcryptCompare\$' -benchtime 8x ."
time_bcrypt() {
  BCRYPT_COST=$bcrypt_cost "${GO:-go}" test -count=1 -run '^$' -bench '^BenchmarkBcryptCompare$' -benchtime 8x . \
    >"$out/bcrypt-$1.txt" 2>&1 || die "timing bcrypt failed: $(tail -n 5 "$out/bcrypt-$1.txt")"
  bcrypt_bound "$out/bcrypt-$1.txt"
  bcrypt_times+=("before $1 $bcrypt_ms ms ($bound req/s)")
}

# --- database ---------------------------------------------------------------------------
log "creating $bench_db"
psql "$admin_url" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" -c "CREATE DATABASE $bench_db" >/dev/null
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start_server schema # applies schema.sql to the empty database
stop_server
log "seeding $users users"
seed_start=$(now_ms)
psql "$bench_url" -q -v users="$users" -v sessions="$refresh_tokens" -v hash="$password_hash" -f bench/seed.sql >/dev/null
seed_ms=$(($(now_ms) - seed_start))
log "seeded in $seed_ms ms"

start_server bench # on the existing schema: this start is the one scenario 7 reports
sleep 1
rss_idle_kb=$(rss_kb VmRSS)
log "server ready in $ready_ms ms at $addr, RSS $((rss_idle_kb / 1024)) MB"
base=http://$addr

token_of() { # token_of USERNAME: logs in through the API
  curl -fsS -H 'Content-Type: application/json' -d "{\"username\":\"$1\",\"password\":\"$password\"}" \
    "$base/api/auth/login" | jq -er .access_token
}
user_token=$(token_of user000001)
admin_token=$(token_of benchadmin)

# --- scenarios -----------------------------------------------------------------------------
me=$base/api/users/me
run_id=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')

log "1. GET /api/users/me: wrk, $connections connections"
me_wrk=(-t "$threads" -c "$connections" --latency -s bench/wrk/me.lua -H "Authorization: Bearer $user_token" "$me")
wrk_run "" "$warmup" "${me_wrk[@]}"
wrk_run 1a "$duration" "${me_wrk[@]}"

log "1. GET /api/users/me: vegeta at $rate req/s"
vegeta_run "" "$warmup" "$rate" "$me" "$user_token"
vegeta_run 1b "$duration" "$rate" "$me" "$user_token"

time_bcrypt login
login_bound=$bound
log "2. POST /api/auth/login: wrk, $login_connections connections"
login_wrk=(-t "$threads" -c "$login_connections" --timeout 30s -s bench/wrk/login.lua "$base/api/auth/login" --)
set_window
wrk_run 2 "$window_secs" "${login_wrk[@]}" "$window_from" "$window_to" "$password" "$users"

log "3. isolation: GET /api/users/me at $rate req/s during a login flood"
flood_secs=$((warmup + duration + 2))
flood_wrk=(-d "${flood_secs}s" "${login_wrk[@]}" 0 0 "$password" "$users") # 0 0: no counting window
record "wrk $(quote "${flood_wrk[@]}") &"
wrk "${flood_wrk[@]}" >"$out/wrk-3-flood.txt" 2>&1 &
flood_pid=$!
sleep 1 # let the flood fill the cores
vegeta_run "" "$warmup" "$rate" "$me" "$user_token"
trace_pid=
if [ -n "$pprof" ]; then # an execution trace of the measured part: go tool trace bench/out/isolation.trace
  curl -fs -o "$out/isolation.trace" "http://$pprof/debug/pprof/trace?seconds=$((duration - 1))" &
  trace_pid=$!
fi
vegeta_run 3 "$duration" "$rate" "$me" "$user_token"
wait "$flood_pid" || true
[ -z "$trace_pid" ] || wait "$trace_pid" || log "no trace: $pprof did not answer"
flood_pid=

log "4. POST /api/auth/refresh: wrk, $connections connections"
set_window
wrk_run 4 "$window_secs" -t "$threads" -c "$connections" --timeout 10s -s bench/wrk/refresh.lua "$base/api/auth/refresh" -- \
  "$window_from" "$window_to" "$refresh_tokens" "$threads"

log "5. GET /api/admin/users at $admin_rate req/s"
declare -A admin_urls=(
  [5a]="$base/api/admin/users?page=1&per_page=50"
  [5b]="$base/api/admin/users?page=1000&per_page=50"
  [5c]="$base/api/admin/users?q=user04242" # 10 of the seeded users, in username and email
)
for row in 5a 5b 5c; do
  vegeta_run "" "$warmup" "$admin_rate" "${admin_urls[$row]}" "$admin_token"
  vegeta_run "$row" "$duration" "$admin_rate" "${admin_urls[$row]}" "$admin_token"
done

time_bcrypt register
register_bound=$bound
log "6. POST /api/auth/register: wrk, $login_connections connections"
register_wrk=(-t "$threads" -c "$login_connections" --timeout 30s -s bench/wrk/register.lua "$base/api/auth/register" --)
set_window
wrk_run 6 "$window_secs" "${register_wrk[@]}" "$window_from" "$window_to" "$run_id" "$password"

rss_peak_kb=$(rss_kb VmHWM)
stop_server
binary_bytes=$(stat -c %s "$bin")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table -----------------------------------------------------------------------------
verdict() { awk "BEGIN { exit !($1) }" 2>/dev/null && echo pass || echo miss; } # a missing figure is a miss
ratio() { awk -v r="$1" -v b="$2" 'BEGIN { printf "%.0f", 100 * r / b }'; }
rows=()
row() { # row SCENARIO ROW TARGET MEASURED VERDICT: a table line with ROW's figures
  local r=$2
  rows+=("| $1 | ${RPS[$r]:--} | ${P50[$r]:--} | ${P99[$r]:--} | ${MAX[$r]:--} | ${ERRORS[$r]:--} | $3 | $4 | $5 |")
}
row "1. GET /api/users/me, wrk 64 conn." 1a ">= 10,000 req/s" "${RPS[1a]} req/s" "$(verdict "${RPS[1a]} >= 10000")"
row "1. GET /api/users/me, vegeta $rate/s" 1b "p99 <= 5 ms" "${P99[1b]} ms" "$(verdict "${P99[1b]} <= 5 && ${ERRORS[1b]} == 0")"
login_pct=$(ratio "${RPS[2]}" "$login_bound")
row "2. POST /api/auth/login, wrk $login_connections conn." 2 ">= 90 % of bound ($login_bound/s)" "$login_pct %" "$(verdict "$login_pct >= 90")"
iso=$(awk -v a="${P99[3]}" -v b="${P99[1b]}" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }')
row "3. /api/users/me $rate/s during login flood" 3 "p99 <= 3x quiet (${P99[1b]} ms), 0 errors" "${iso}x, ${ERRORS[3]} errors" \
  "$(verdict "$iso <= 3 && ${ERRORS[3]} == 0")"
row "4. POST /api/auth/refresh, wrk $connections conn." 4 ">= 3,000 req/s" "${RPS[4]} req/s" "$(verdict "${RPS[4]} >= 3000 && ${ERRORS[4]} == 0")"
row "5. admin list page 1 (per_page=50), $admin_rate/s" 5a "p50 <= 10 ms" "${P50[5a]} ms" "$(verdict "${P50[5a]} <= 10 && ${ERRORS[5a]} == 0")"
row "5. admin list page 1000 (per_page=50), $admin_rate/s" 5b "p50 <= 10 ms" "${P50[5b]} ms" "$(verdict "${P50[5b]} <= 10 && ${ERRORS[5b]} == 0")"
row "5. admin list q=user04242, $admin_rate/s" 5c "p50 <= 20 ms" "${P50[5c]} ms" "$(verdict "${P50[5c]} <= 20 && ${ERRORS[5c]} == 0")"
register_pct=$(ratio "${RPS[6]}" "$register_bound")
row "6. POST /api/auth/register, wrk $login_connections conn." 6 ">= 90 % of bound ($register_bound/s)" "$register_pct %" "$(verdict "$register_pct >= 90")"
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
rows+=("| 7. server RSS idle | | | | | | <= 30 MB | $(mb "$rss_idle_kb") MB | $(verdict "$rss_idle_kb <= 30 * 1024") |")
rows+=("| 7. server RSS peak (VmHWM) | | | | | | <= 150 MB | $(mb "$rss_peak_kb") MB | $(verdict "$rss_peak_kb <= 150 * 1024") |")
rows+=("| 7. start to ready (/healthz 200), existing schema | | | | | | <= 200 ms | $ready_ms ms | $(verdict "$ready_ms <= 200") |")
rows+=("| 7. binary size | | | | | | | $(awk -v b="$binary_bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MB | |")

table=$(
  echo "| scenario | req/s | p50 ms | p99 ms | max ms | errors | target | measured | result |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
)
echo
echo "$table"
echo

# --- results.md ----------------------------------------------------------------------------
pg_version=$(psql "$admin_url" -Atc 'SHOW server_version')
{
  echo "# usermgmt benchmark results"
  echo
  echo "Written by \`make bench\` (bench/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "- CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $cores cores" \
    "(server, PostgreSQL and load generators share them)"
  echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r)"
  echo "- load average (1, 5, 15 min) at start: $load_start; at end: $load_end"
  echo "- $("${GO:-go}" version | cut -d' ' -f3-); PostgreSQL $pg_version; wrk $(dpkg-query -W -f='${Version}' wrk);" \
    "vegeta $(cat bench/.bin/vegeta.version)"
  echo "- server: ./usermgmt with its defaults but BCRYPT_COST=$bcrypt_cost, MAIL_BACKEND=log, a random" \
    "JWT_SECRET_KEY and TRUSTED_PROXIES=127.0.0.1/32; request logging on (to a file); GOMAXPROCS=$cores + BCRYPT_CONCURRENCY (set by the server)." \
    "The wrk scripts of the authentication endpoints give each request its own X-Forwarded-For" \
    "address, so the per-address rate limit (AUTH_RATE_LIMIT, on) is paid on every request without" \
    "one address's limit throttling the benchmark"
  echo "- data: $users seeded users plus one admin (seeded in $seed_ms ms); every scenario runs" \
    "${duration}s after a ${warmup}s warm-up; $refresh_tokens seeded refresh sessions for scenario 4"
  echo "- bcrypt at cost $bcrypt_cost: one comparison, timed in-process by BenchmarkBcryptCompare, took" \
    "$(printf '%s; ' "${bcrypt_times[@]}" | sed 's/; $//'); the bound of login and register is" \
    "$cores cores / that time, taken just before each of them"
  echo
  echo "$table"
  echo
  echo "req/s: wrk rows are completed requests per second (closed loop); vegeta rows are successful"
  echo "replies per second at a fixed offered rate (open loop). errors: non-2xx replies and socket"
  echo "errors. The login flood of scenario 3 itself ran at" \
    "$(awk '/^Requests\/sec:/ { print $2 }' "$out/wrk-3-flood.txt") logins/s over its ${flood_secs}s."
  echo
  echo "## Go benchmarks"
  echo
  echo '```'
  echo "\$ $go_bench_cmd"
  grep -E '^(Benchmark|goos|goarch|cpu|ok|PASS|FAIL)' "$out/go-bench.txt"
  echo '```'
  echo
  echo "## Commands"
  echo
  echo "\$SERVER is the server's address, \$USER_TOKEN the access token of user000001 and"
  echo "\$ADMIN_TOKEN that of benchadmin, both from POST /api/auth/login. Each vegeta and wrk /me"
  echo "command ran once for ${warmup}s first, as a warm-up (the scenario 3 flood ran alongside both of"
  echo "its vegeta runs). The login, refresh and register runs warm up within the run: their scripts count"
  echo "only the replies between the two Unix times that follow --, ${duration}s apart (bench/wrk/report.lua)."
  echo
  echo '```'
  echo "env -i DATABASE_URL=.../$bench_db JWT_SECRET_KEY=<random> BCRYPT_COST=$bcrypt_cost MAIL_BACKEND=log TRUSTED_PROXIES=127.0.0.1/32 ADDR=127.0.0.1:0 ./usermgmt -env-file="
  echo "psql .../$bench_db -v users=$users -v sessions=$refresh_tokens -v hash='<bcrypt of $password>' -f bench/seed.sql"
  echo "$bcrypt_cmd   # before scenarios 2 and 6"
  printf '%s\n' "${commands[@]}"
  echo '```'
} >"$results"
log "wrote $results; raw outputs in $out/"
