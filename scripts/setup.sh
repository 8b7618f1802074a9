#!/usr/bin/env bash
# Prepares everything usermgmt needs on a Debian/Ubuntu machine and writes .env:
#   - with DATABASE_URL set (in the environment or .env) it uses that database and installs no PostgreSQL;
#   - otherwise it installs PostgreSQL if missing, starts the local cluster, creates a role named
#     after the current OS user (it may create databases, which the tests need) and the database
#     "usermgmt", and writes a .env whose DATABASE_URL connects over the local socket with peer
#     authentication (no password to store or to get out of step), plus a random JWT secret.
# Safe to run again: an existing .env is kept; missing keys are added.
# With --test-tools it only installs, when missing, the programs the tests run besides
# PostgreSQL: oathtool, chromium, nginx and pgbouncer (make test does this; make run does not).
set -euo pipefail
cd "$(dirname "$0")/.."

env_file=.env
db_name=${USERMGMT_DB_NAME:-usermgmt}
db_role=$(id -un)

# Marks a DATABASE_URL this script wrote, so that later runs start the local cluster again.
managed_marker='# local database managed by scripts/setup.sh'

log() { printf 'setup: %s\n' "$*" >&2; }

# as_root runs a command as root, through sudo when we are not root already.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# as_postgres runs a command as the postgres OS user (the cluster's superuser).
as_postgres() {
  # From /, which postgres can always enter (a clone in a private directory draws a warning).
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres "$@"); fi
}

random_secret() { head -c 48 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | head -c "$1"; }

# shellcheck source=scripts/envfile.sh
. scripts/envfile.sh # env_value

add_env() { # add_env KEY VALUE: appends KEY=VALUE to .env unless KEY is already there
  if [ -z "$(env_value "$1")" ]; then
    printf '%s=%s\n' "$1" "$2" >>"$env_file"
    log "wrote $1 to $env_file"
  fi
}

install_postgres() {
  command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ] && return 0
  log "PostgreSQL not found: installing it with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
}

# start_cluster starts the first local cluster if it is down and prints its port: the only thing
# it writes to stdout, since callers capture it (pg_ctlcluster's own chatter, such as "Removed
# stale pid file.", goes to stderr).
start_cluster() {
  local version name port status
  read -r version name port status _ < <(pg_lsclusters -h | head -n 1)
  if [ "$status" != online ]; then
    log "starting PostgreSQL $version/$name"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >&2
  fi
  for _ in $(seq 50); do
    if as_postgres psql -p "$port" -qAtc 'select 1' >/dev/null 2>&1; then
      echo "$port"
      return 0
    fi
    sleep 0.2
  done
  log "PostgreSQL $version/$name does not answer on port $port; see pg_lsclusters and its log in /var/log/postgresql"
  return 1
}

# pick_database PORT: "usermgmt", unless a database of that name belongs to another role (made
# by someone else on this machine): then one of our own beside it.
pick_database() {
  local owner
  owner=$(as_postgres psql -p "$1" -qAt -v db="$db_name" <<'SQL'
SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'db'
SQL
)
  if [ -n "$owner" ] && [ "$owner" != "$db_role" ]; then
    db_name="${db_name}_$db_role"
  fi
}

create_role_and_database() { # create_role_and_database PORT
  pick_database "$1"
  as_postgres psql -p "$1" -v ON_ERROR_STOP=1 -qAt -v role="$db_role" -v db="$db_name" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB', :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
}

socket_dir() { # socket_dir PORT: the first directory the cluster puts its socket in
  as_postgres psql -p "$1" -qAtc 'SHOW unix_socket_directories' | cut -d, -f1 | tr -d ' '
}

# warn_if_in_use: the database of a DATABASE_URL this script manages may be one it made on an
# earlier run, or for another checkout on this machine (the name is the same), and hold its
# users: then -create-admin refuses and the walkthrough's registrations meet 409. Say so.
warn_if_in_use() {
  local url name users
  url=$(env_value DATABASE_URL)
  name=${url#postgres:///}
  name=${name%%\?*}
  # No users table (a database just made) or no answer: nothing to warn about.
  users=$(psql "$url" -qAtc 'SELECT count(*) FROM users' 2>/dev/null) || return 0
  [ "${users:-0}" -gt 0 ] || return 0
  log "reusing database \"$name\", which already holds $users user(s) from an earlier run or another checkout;"
  log "  -create-admin will refuse (an admin exists) and the walkthrough's names may be taken. For a fresh database,"
  log "  delete the DATABASE_URL line from $env_file and run again with another name: USERMGMT_DB_NAME=${name}_2 make run"
}

# install_test_tools installs, when missing, what the tests run besides PostgreSQL: oathtool (an
# independent TOTP implementation, and codes for the README's walkthrough), chromium (the
# browser tests drive it headless), nginx and pgbouncer (the cluster test starts its own on
# loopback; the packages' services are not used).
install_test_tools() {
  local missing=() tool
  for tool in oathtool chromium nginx pgbouncer; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} with apt-get, for the tests"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

main() {
  if [ "${1:-}" = --test-tools ]; then
    install_test_tools
    return
  fi
  touch "$env_file"
  chmod 600 "$env_file"
  if [ -n "${DATABASE_URL:-}" ] || { [ -n "$(env_value DATABASE_URL)" ] && ! grep -q "^$managed_marker" "$env_file"; }; then
    log "DATABASE_URL is set: using that database, installing no PostgreSQL"
  elif [ -n "$(env_value DATABASE_URL)" ]; then
    install_postgres
    start_cluster >/dev/null
    warn_if_in_use
  else
    install_postgres
    local port
    port=$(start_cluster)
    create_role_and_database "$port"
    grep -q "^$managed_marker" "$env_file" || echo "$managed_marker" >>"$env_file"
    add_env DATABASE_URL "postgres:///$db_name?host=$(socket_dir "$port")&port=$port"
    # A local development set-up: reset tokens come back in API replies, no mail server needed.
    add_env MAIL_BACKEND dummy
    warn_if_in_use
  fi
  add_env JWT_SECRET_KEY "$(random_secret 64)"
}

main "$@"
