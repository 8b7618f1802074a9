# Sourced by scripts/setup.sh and bench/run.sh: reads .env the way the server does.

# env_value KEY [FILE]: the last value of KEY in FILE (default .env), empty when absent. Like
# the server (parseEnvFile), it allows "export " before the key, spaces around "=", and one
# pair of enclosing quotes.
env_value() {
  local file=${2:-.env}
  [ -f "$file" ] || return 0
  sed -nE "s/^[[:space:]]*(export [[:space:]]*)?$1[[:space:]]*=[[:space:]]*//p" "$file" | tail -n 1 |
    sed -E "s/[[:space:]]+\$//; /^\".*\"\$/ { s/^\"(.*)\"\$/\1/; b; }; s/^'(.*)'\$/\1/"
}
