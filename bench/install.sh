#!/usr/bin/env bash
# Installs the load generators `make bench` drives the service with, pinned:
#   - wrk, closed-loop throughput, from Debian's packages (apt-get; sudo when not root);
#   - vegeta, open-loop fixed-rate latency, from the Go module proxy into bench/.bin;
#   - jq and curl, which bench/run.sh uses to read vegeta's reports and to poll the server.
# Safe to run again: what is installed already at the pinned version is left alone.
set -euo pipefail
cd "$(dirname "$0")"

WRK_VERSION=4.1.0-3+b2 # Debian 12's package
VEGETA_VERSION=v12.13.0

log() { printf 'bench install: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() { # apt_install PACKAGE...: installs the packages, updating the lists once
  if [ -z "$apt_updated" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

if [ "$(deb_version wrk)" != "$WRK_VERSION" ]; then
  log "installing wrk $WRK_VERSION with apt-get"
  # The exact version when the archive still has it; otherwise Debian's current wrk, with a warning.
  apt_install "wrk=$WRK_VERSION" 2>/dev/null || apt_install wrk
  [ "$(deb_version wrk)" = "$WRK_VERSION" ] || log "warning: wrk $(deb_version wrk) installed, not the pinned $WRK_VERSION"
fi
missing=()
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt-get"
  apt_install "${missing[@]}"
fi

# go install with a version builds exactly that module version, checked against the Go
# checksum database; vegeta.version records which version bench/.bin holds.
bin_dir=$PWD/.bin
if [ ! -x "$bin_dir/vegeta" ] || [ "$(cat "$bin_dir/vegeta.version" 2>/dev/null)" != "$VEGETA_VERSION" ]; then
  log "installing vegeta $VEGETA_VERSION into bench/.bin"
  mkdir -p "$bin_dir"
  GOBIN=$bin_dir CGO_ENABLED=0 "${GO:-go}" install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
  echo "$VEGETA_VERSION" >"$bin_dir/vegeta.version"
fi
