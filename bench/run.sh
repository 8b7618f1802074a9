#!/usr/bin/env bash
# bench/run.sh: the load tests of `make bench` (issue 15). Every target is a ratio to a figure
# measured in the same run, on the same machine and database: absolute figures on a shared
# 2-core machine swing twofold from day to day, ratios much less. `make bench` prepares
# PostgreSQL and .env (scripts/setup.sh) and builds ./usermgmt first, then this script:
#   1. installs the pinned load generators (bench/install.sh: wrk from Debian, vegeta from the
#      Go module proxy into bench/.bin) and builds bench/baseline and bench/idle there;
#   2. runs the Go benchmarks (bench_test.go); BenchmarkBcryptCompare, run again just before
#      login and register, gives their bcrypt bound: cores / time of one comparison at cost 12;
#   3. creates a fresh database usermgmt_bench, lets the server apply the schema, seeds 100,000
#      users with set-based SQL (bench/seed.sql) and starts the server with production settings,
#      and the baseline (bench/baseline: net/http and a pgx pool of the same size, no
#      authentication, no logging) on the same database;
#   4. runs each scenario against the baseline and the service with the same load generator
#      settings, after a BENCH_WARMUP, for BENCH_DURATION each;
#   5. grows the database to BENCH_USERS users with as many sessions (bench/grow.sql) and runs
#      the scale scenarios;
#   6. prints the table and adds it, with the machine, its load and the exact commands, to
#      bench/results.md (one section per run, the newest first).
# The servers are stopped, background load killed and the bench database dropped on any exit.
# Nothing fails on a missed target; the table says pass or miss.
#
# Settings (environment):
#   BENCH_DURATION=10s     measured time of each scenario (seconds: 10s, 30s, 1m)
#   BENCH_WARMUP=2s        warm-up before each scenario, not measured
#   BENCH_USERS=1000000    users (and sessions) of the scale scenarios; at most 100,000 skips them
#   BENCH_RATE=2000        fixed rate of the /api/users/me latency runs, req/s
#   BENCH_ADMIN_RATE=20    fixed rate of the admin list runs, req/s
#   BENCH_IDLE=10000       keep-alive connections held open in the idle scenario
#   BENCH_KEEP_DB=1        keep usermgmt_bench after the run, to look at it
#   BENCH_PPROF=127.0.0.1:6061  serve the server's profiles there and save an execution trace of
#                          the login flood scenario to bench/out/isolation.trace (go tool trace)
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
scale_users=${BENCH_USERS:-1000000}
users=$((scale_users < 100000 ? scale_users : 100000)) # the users of every scenario but the scale ones
idle_connections=${BENCH_IDLE:-10000}
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
baseline_bin=bench/.bin/baseline
idle_bin=bench/.bin/idle

[ -x "$bin" ] || die "$bin is missing: run \`make bench\`, which builds it"
bench/install.sh
"${GO:-go}" build -o "$baseline_bin" ./bench/baseline
"${GO:-go}" build -o "$idle_bin" ./bench/idle
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
baseline_pid=
flood_pid=
idle_pid=
cleanup() {
  local status=$?
  [ -z "$flood_pid" ] || kill "$flood_pid" 2>/dev/null || true
  [ -z "$idle_pid" ] || kill "$idle_pid" 2>/dev/null || true
  [ -z "$baseline_pid" ] || kill "$baseline_pid" 2>/dev/null || true
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

# start_server NAME [VAR=VALUE...] starts the server with production settings (and the given
# ones) on a free port; it sets server_pid, addr (host:port) and ready_ms (from process start
# to the first 200 from /healthz).
start_server() {
  local log_file=$out/server-$1.log start deadline
  shift
  start=$(now_ms)
  env -i PATH="$PATH" DATABASE_URL="$bench_url" JWT_SECRET_KEY="$jwt_secret" BCRYPT_COST=$bcrypt_cost \
    MAIL_BACKEND=log TRUSTED_PROXIES=127.0.0.1/32 ADDR=127.0.0.1:0 "$@" "$bin" -env-file= ${pprof:+-pprof "$pprof"} >"$log_file" 2>&1 &
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

# start_baseline starts bench/baseline on the bench database; it sets baseline_pid and
# baseline_addr.
start_baseline() {
  local log_file=$out/baseline.log deadline
  env -i PATH="$PATH" DATABASE_URL="$bench_url" ADDR=127.0.0.1:0 "$baseline_bin" >"$log_file" 2>&1 &
  baseline_pid=$!
  deadline=$(($(now_ms) + 30000))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    kill -0 "$baseline_pid" 2>/dev/null || die "the baseline exited: $(tail -n 5 "$log_file")"
    baseline_addr=$(sed -n 's/.*msg=listening addr=\([^ ]*\).*/\1/p' "$log_file")
    [ -z "$baseline_addr" ] || return 0
    sleep 0.005
  done
  die "the baseline did not start in 30 s: $(tail -n 5 "$log_file")"
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
  cmd=${cmd//"$addr"/\$SERVER}
  commands+=("${cmd//"$baseline_addr"/\$BASELINE}")
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

start_server bench # on the existing schema: this start is the one the start-up row reports
start_baseline
start_ms=$ready_ms
sleep 1
rss_idle_kb=$(rss_kb VmRSS)
log "server ready in $ready_ms ms at $addr, RSS $((rss_idle_kb / 1024)) MB; baseline at $baseline_addr"
base=http://$addr
baseline=http://$baseline_addr

token_of() { # token_of USERNAME: logs in through the API
  curl -fsS -H 'Content-Type: application/json' -d "{\"username\":\"$1\",\"password\":\"$password\"}" \
    "$base/api/auth/login" | jq -er .access_token
}
user_token=$(token_of user000001)
admin_token=$(token_of benchadmin)
user_id=$(psql "$bench_url" -Atc "SELECT id FROM users WHERE username = 'user000001'")
first_session=$(psql "$bench_url" -Atc "SELECT min(id) FROM sessions")

# --- scenarios -----------------------------------------------------------------------------
me=$base/api/users/me
baseline_get=$baseline/users/$user_id
run_id=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')

# cpu_ticks PID: the process's CPU time so far (user and system), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
clock_ticks=$(getconf CLK_TCK)

# me_wrk ROW URL PID [TOKEN]: GET URL with wrk, $connections connections, after a warm-up;
# CPU[ROW] is the CPU time that process PID spent per request, in microseconds.
declare -A CPU
me_wrk() {
  local args=(-t "$threads" -c "$connections" --latency -s bench/wrk/me.lua) ticks
  [ -z "${4:-}" ] || args+=(-H "Authorization: Bearer $4")
  wrk_run "" "$warmup" "${args[@]}" "$2"
  ticks=$(cpu_ticks "$3")
  wrk_run "$1" "$duration" "${args[@]}" "$2"
  CPU[$1]=$(awk -v t=$(($(cpu_ticks "$3") - ticks)) -v hz="$clock_ticks" -v rps="${RPS[$1]}" -v s="$duration" \
    'BEGIN { printf "%.0f", t / hz * 1e6 / (rps * s) }')
}
# me_rate ROW URL [TOKEN]: GET URL with vegeta at $rate req/s, after a warm-up.
me_rate() {
  vegeta_run "" "$warmup" "$rate" "$2" "${3:-}"
  vegeta_run "$1" "$duration" "$rate" "$2" "${3:-}"
}

log "1. GET /api/users/me and the baseline's GET: wrk, $connections connections (baseline before and after)"
me_wrk 1b "$baseline_get" "$baseline_pid"
me_wrk 1 "$me" "$server_pid" "$user_token"
me_wrk 1c "$baseline_get" "$baseline_pid"
RPS[1base]=$(awk -v a="${RPS[1b]}" -v b="${RPS[1c]}" 'BEGIN { printf "%.1f", (a + b) / 2 }')
CPU[1base]=$(((CPU[1b] + CPU[1c]) / 2))

log "2. GET /api/users/me and the baseline's GET: vegeta at $rate req/s"
me_rate 2b "$baseline_get"
me_rate 2 "$me" "$user_token"

log "3. POST /api/auth/refresh and the baseline's POST: wrk, $connections connections"
set_window
wrk_run 3b "$window_secs" -t "$threads" -c "$connections" --timeout 10s -s bench/wrk/baseline-refresh.lua "$baseline/refresh" -- \
  "$window_from" "$window_to" "$first_session" "$refresh_tokens" "$threads"
# The service then starts from the tables the baseline found: without the baseline's tokens
# (they expire within the hour, the seeded and the service's in days) and vacuumed.
psql "$bench_url" -qc "DELETE FROM refresh_tokens WHERE expires_at < now() + interval '2 hours'" \
  -c "VACUUM ANALYZE sessions" -c "VACUUM ANALYZE refresh_tokens" >/dev/null
set_window
wrk_run 3 "$window_secs" -t "$threads" -c "$connections" --timeout 10s -s bench/wrk/refresh.lua "$base/api/auth/refresh" -- \
  "$window_from" "$window_to" "$refresh_tokens" "$threads"

log "4. isolation: GET /api/users/me at $rate req/s during a login flood"
login_wrk=(-t "$threads" -c "$login_connections" --timeout 30s -s bench/wrk/login.lua "$base/api/auth/login" --)
flood_secs=$((warmup + duration + 2))
flood_wrk=(-d "${flood_secs}s" "${login_wrk[@]}" 0 0 "$password" "$users") # 0 0: no counting window
record "wrk $(quote "${flood_wrk[@]}") &"
wrk "${flood_wrk[@]}" >"$out/wrk-4-flood.txt" 2>&1 &
flood_pid=$!
sleep 1 # let the flood fill the cores
vegeta_run "" "$warmup" "$rate" "$me" "$user_token"
trace_pid=
if [ -n "$pprof" ]; then # an execution trace of the measured part: go tool trace bench/out/isolation.trace
  curl -fs -o "$out/isolation.trace" "http://$pprof/debug/pprof/trace?seconds=$((duration - 1))" &
  trace_pid=$!
fi
vegeta_run 4 "$duration" "$rate" "$me" "$user_token"
wait "$flood_pid" || true
[ -z "$trace_pid" ] || wait "$trace_pid" || log "no trace: $pprof did not answer"
flood_pid=

log "5. POST /api/auth/login: wrk, $login_connections connections"
time_bcrypt login
login_bound=$bound
set_window
wrk_run 5 "$window_secs" "${login_wrk[@]}" "$window_from" "$window_to" "$password" "$users"

time_bcrypt register
register_bound=$bound
log "5. POST /api/auth/register: wrk, $login_connections connections"
register_wrk=(-t "$threads" -c "$login_connections" --timeout 30s -s bench/wrk/register.lua "$base/api/auth/register" --)
set_window
wrk_run 5r "$window_secs" "${register_wrk[@]}" "$window_from" "$window_to" "$run_id" "$password"

# idle_run ROW: $idle_connections idle keep-alive connections held open to the server, and
# GET /api/users/me at $rate req/s beside them; IDLE_RSS[ROW] and IDLE_PEAK[ROW] are the
# server's VmRSS after the run and its VmHWM, in kB.
declare -A IDLE_RSS IDLE_PEAK
idle_run() {
  record "$idle_bin -addr \$SERVER -n $idle_connections &"
  "$idle_bin" -addr "$addr" -n "$idle_connections" >"$out/idle-$1.txt" 2>&1 &
  idle_pid=$!
  local deadline=$(($(now_ms) + 120000))
  until grep -q '^ready' "$out/idle-$1.txt"; do
    kill -0 "$idle_pid" 2>/dev/null || die "the idle connections failed: $(tail -n 3 "$out/idle-$1.txt")"
    [ "$(now_ms)" -lt "$deadline" ] || die "the idle connections were not open in 120 s"
    sleep 0.1
  done
  me_rate "$1" "$me" "$user_token"
  IDLE_RSS[$1]=$(rss_kb VmRSS)
  IDLE_PEAK[$1]=$(rss_kb VmHWM)
  kill "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" 2>/dev/null || true
  idle_pid=
}

# restart_server [VAR=VALUE...]: a fresh server process on the same database.
restart_server() {
  stop_server
  start_server "restart" "$@"
  base=http://$addr
  me=$base/api/users/me
}

log "6. $idle_connections idle keep-alive connections, and GET /api/users/me at $rate req/s beside them"
idle_rss_before_kb=$(rss_kb VmRSS)
idle_run 6
idle_goroutine_kb=$(awk -v a="${IDLE_RSS[6]}" -v b="$idle_rss_before_kb" -v n="$idle_connections" 'BEGIN { printf "%.1f", (a - b) / n }')
memory_limit=180MiB
log "6. the same with GOMEMLIMIT=$memory_limit"
restart_server GOMEMLIMIT=$memory_limit
idle_run 6m
restart_server

scaled=
if [ "$scale_users" -gt "$users" ]; then
  log "7. scale: growing to $scale_users users and $scale_users sessions"
  grow_start=$(now_ms)
  psql "$bench_url" -q -v from="$users" -v users="$scale_users" -v hash="$password_hash" -f bench/grow.sql >/dev/null
  grow_ms=$(($(now_ms) - grow_start))
  log "grown in $grow_ms ms"
  me_wrk 7b "$baseline_get" "$baseline_pid"
  me_wrk 7 "$me" "$server_pid" "$user_token"
  declare -A admin_urls=(
    [7p1]="$base/api/admin/users?page=1&per_page=50"
    [7p10k]="$base/api/admin/users?page=10000&per_page=50"
    [7q]="$base/api/admin/users?q=user04242" # 10 of the seeded users, in username and email
  )
  for row in 7p1 7p10k 7q; do
    vegeta_run "" "$warmup" "$admin_rate" "${admin_urls[$row]}" "$admin_token"
    vegeta_run "$row" "$duration" "$admin_rate" "${admin_urls[$row]}" "$admin_token"
  done
  scaled=1
fi

rss_peak_kb=$(rss_kb VmHWM)
stop_server
kill "$baseline_pid" 2>/dev/null || true
baseline_pid=
binary_bytes=$(stat -c %s "$bin")
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table -----------------------------------------------------------------------------
verdict() { awk "BEGIN { exit !($1) }" 2>/dev/null && echo pass || echo miss; } # a missing figure is a miss
percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b > 0 ? 100 * a / b : 0) }'; }
times() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }'; }
rows=()
# row SCENARIO RATIO TARGET VERDICT ROW [BASELINE-ROW]: a table line, the ratio first, then
# ROW's figures and its baseline's.
row() {
  local r=$5 b=${6:-}
  local base_rps=${b:+${RPS[$b]:--}} base_p99=${b:+${P99[$b]:--}}
  rows+=("| $1 | **$2** | $3 | $4 | ${RPS[$r]:--} | ${base_rps:--} | ${P50[$r]:--} | ${P99[$r]:--} | ${base_p99:--} | ${ERRORS[$r]:--} |")
}
me_pct=$(percent "${RPS[1]}" "${RPS[1base]}")
row "GET /api/users/me, wrk $connections conn. (baseline: mean of the runs before and after)" "$me_pct %" ">= 90 % of the baseline" \
  "$(verdict "$me_pct >= 90 && ${ERRORS[1]} == 0")" 1 1base
me_p99=$(times "${P99[2]}" "${P99[2b]}")
row "GET /api/users/me, vegeta $rate/s" "${me_p99}x p99" "p99 <= 2x the baseline's" "$(verdict "$me_p99 <= 2 && ${ERRORS[2]} == 0")" 2 2b
refresh_pct=$(percent "${RPS[3]}" "${RPS[3b]}")
row "POST /api/auth/refresh, wrk $connections conn." "$refresh_pct %" ">= 80 % of the baseline's POST" \
  "$(verdict "$refresh_pct >= 80 && ${ERRORS[3]} == 0")" 3 3b
iso=$(times "${P99[4]}" "${P99[2]}")
row "GET /api/users/me $rate/s during a login flood (vs the quiet run above)" "${iso}x p99" "p99 <= 3x quiet, 0 errors" \
  "$(verdict "$iso <= 3 && ${ERRORS[4]} == 0")" 4
login_pct=$(percent "${RPS[5]}" "$login_bound")
row "POST /api/auth/login, wrk $login_connections conn. (bound $login_bound/s)" "$login_pct %" ">= 95 % of the bcrypt bound" \
  "$(verdict "$login_pct >= 95 && ${ERRORS[5]} == 0")" 5
register_pct=$(percent "${RPS[5r]}" "$register_bound")
row "POST /api/auth/register, wrk $login_connections conn. (bound $register_bound/s)" "$register_pct %" ">= 95 % of the bcrypt bound" \
  "$(verdict "$register_pct >= 95 && ${ERRORS[5r]} == 0")" 5r
mb() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }
idle_p99=$(times "${P99[6]}" "${P99[2]}")
row "GET /api/users/me $rate/s beside $idle_connections idle keep-alive connections (vs the quiet run)" "${idle_p99}x p99" \
  "p99 unchanged within 2x" "$(verdict "$idle_p99 <= 2 && ${ERRORS[6]} == 0")" 6
rows+=("| server RSS with $idle_connections idle connections (VmRSS after the run above; peak $(mb "${IDLE_PEAK[6]}") MB) | **$(mb "${IDLE_RSS[6]}") MB** | <= 200 MB | $(verdict "${IDLE_RSS[6]} <= 200 * 1024") | | | | | | |")
idle_p99m=$(times "${P99[6m]}" "${P99[2]}")
row "the same with GOMEMLIMIT=$memory_limit: GET /api/users/me $rate/s beside $idle_connections idle connections (vs the quiet run)" "${idle_p99m}x p99" \
  "p99 unchanged within 2x" "$(verdict "$idle_p99m <= 2 && ${ERRORS[6m]} == 0")" 6m
rows+=("| the same with GOMEMLIMIT=$memory_limit: server RSS (peak $(mb "${IDLE_PEAK[6m]}") MB) | **$(mb "${IDLE_RSS[6m]}") MB** | <= 200 MB | $(verdict "${IDLE_RSS[6m]} <= 200 * 1024") | | | | | | |")
if [ -n "$scaled" ]; then
  # The service's share of the baseline at this size against its share at $users users: the
  # machine's drift between the two runs, which moves the baseline too, cancels out.
  scale_pct=$(awk -v s7="${RPS[7]}" -v b7="${RPS[7b]}" -v s1="${RPS[1]}" -v b1="${RPS[1base]}" \
    'BEGIN { printf "%.0f", (b7 > 0 && s1 > 0 ? 100 * (s7 / b7) / (s1 / b1) : 0) }')
  raw_pct=$(percent "${RPS[7]}" "${RPS[1]}")
  base_drift=$(percent "${RPS[7b]}" "${RPS[1base]}")
  row "GET /api/users/me at $scale_users users and sessions, wrk $connections conn.: its share of the baseline against that at $users users (raw req/s $raw_pct % of the first run; the baseline's $base_drift %)" \
    "$scale_pct %" "within 10 % (>= 90 %)" "$(verdict "$scale_pct >= 90 && ${ERRORS[7]} == 0")" 7 7b
  row "admin list page 1 (per_page=50) at $scale_users users, $admin_rate/s" "${P50[7p1]} ms p50" "p50 <= 20 ms" \
    "$(verdict "${P50[7p1]} <= 20 && ${ERRORS[7p1]} == 0")" 7p1
  row "admin list page 10,000 (per_page=50) at $scale_users users, $admin_rate/s" "${P50[7p10k]} ms p50" "p50 <= 20 ms" \
    "$(verdict "${P50[7p10k]} <= 20 && ${ERRORS[7p10k]} == 0")" 7p10k
  row "admin list q=user04242 at $scale_users users, $admin_rate/s" "${P50[7q]} ms p50" "p50 <= 20 ms" \
    "$(verdict "${P50[7q]} <= 20 && ${ERRORS[7q]} == 0")" 7q
else
  rows+=("| scale: $scale_users users is not above $users (BENCH_USERS=1000000 runs it) | | | not run | | | | | | |")
fi

context=(
  "CPU time per GET in scenario 1 (the process's user and system time over the run, from /proc): service ${CPU[1]} us, baseline ${CPU[1base]} us ($(times "${CPU[1]}" "${CPU[1base]}")x)"
  "server RSS idle $(mb "$rss_idle_kb") MB; about $idle_goroutine_kb kB more per idle connection; the server of the last runs peaked (VmHWM) at $(mb "$rss_peak_kb") MB"
  "start to ready (/healthz 200) on the existing schema: $start_ms ms; binary $(awk -v b="$binary_bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MB"
)

table=$(
  echo "| scenario | ratio | target | result | req/s | baseline req/s | p50 ms | p99 ms | baseline p99 ms | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
)
echo
echo "$table"
printf -- '- %s\n' "${context[@]}"
echo

# --- results.md ----------------------------------------------------------------------------
pg_version=$(psql "$admin_url" -Atc 'SHOW server_version')
run_section=$(
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $cores cores" \
    "(server, baseline, PostgreSQL and load generators share them)"
  echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r)"
  echo "- load average (1, 5, 15 min) before: $load_start; after: $load_end"
  echo "- $("${GO:-go}" version | cut -d' ' -f3-); PostgreSQL $pg_version; wrk $(dpkg-query -W -f='${Version}' wrk);" \
    "vegeta $(cat bench/.bin/vegeta.version); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' with changes')"
  echo "- data: $users seeded users plus one admin (seeded in $seed_ms ms), $refresh_tokens refresh sessions;" \
    "${scaled:+grown to $scale_users users and sessions in ${grow_ms:-} ms for the scale rows;} every scenario ran" \
    "${duration}s after a ${warmup}s warm-up"
  echo "- bcrypt at cost $bcrypt_cost, one comparison: $(printf '%s; ' "${bcrypt_times[@]}" | sed 's/; $//')"
  echo
  echo "$table"
  echo
  printf -- '- %s\n' "${context[@]}"
  echo
  echo "<details><summary>Go benchmarks and commands</summary>"
  echo
  echo '```'
  echo "\$ $go_bench_cmd"
  grep -E '^(Benchmark|goos|goarch|cpu|ok|PASS|FAIL)' "$out/go-bench.txt"
  echo '```'
  echo
  echo "\$SERVER is the service, \$BASELINE bench/baseline; \$USER_TOKEN and \$ADMIN_TOKEN are the"
  echo "access tokens of user000001 and benchadmin. Each /me command ran once for ${warmup}s first as a"
  echo "warm-up; the refresh, login and register scripts count only the replies between the two Unix"
  echo "times after --, ${duration}s apart (bench/wrk/report.lua)."
  echo
  echo '```'
  echo "env -i DATABASE_URL=.../$bench_db JWT_SECRET_KEY=<random> BCRYPT_COST=$bcrypt_cost MAIL_BACKEND=log TRUSTED_PROXIES=127.0.0.1/32 ADDR=127.0.0.1:0 ./usermgmt -env-file="
  echo "env -i DATABASE_URL=.../$bench_db ADDR=127.0.0.1:0 $baseline_bin"
  echo "psql .../$bench_db -v users=$users -v sessions=$refresh_tokens -v hash='<bcrypt of $password>' -f bench/seed.sql"
  [ -z "$scaled" ] || echo "psql .../$bench_db -v from=$users -v users=$scale_users -v hash='<bcrypt of $password>' -f bench/grow.sql"
  echo "$bcrypt_cmd   # before login and register"
  printf '%s\n' "${commands[@]}"
  echo '```'
  echo
  echo "</details>"
)
previous=
[ ! -f "$results" ] || previous=$(sed -n '/^## /,$p' "$results")
{
  echo "# usermgmt benchmark results"
  echo
  echo "One section per \`make bench\` run, the newest first (bench/run.sh writes them). Ratios compare"
  echo "figures of the same run; absolute figures are context and move with the machine's day."
  echo
  echo "$run_section"
  if [ -n "$previous" ]; then
    echo
    echo "$previous"
  fi
} >"$results"
log "wrote $results; raw outputs in $out/"
