#!/usr/bin/env bash
# Brings up the local Postgres and Redis that scripts/run and scripts/test use.
# Sourced, not executed. Idempotent: a second call reuses what is already up.
#
# Everything lives under .data/ (git-ignored). Servers run as a non-root user
# (initdb refuses root), listen on loopback only, on ports of their own so they
# never collide with a system Postgres or Redis.

set -euo pipefail

MATCHDAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${MATCHDAY_DATA_DIR:-$MATCHDAY_ROOT/.data}"
PG_PORT="${MATCHDAY_PG_PORT:-54329}"
REDIS_PORT="${MATCHDAY_REDIS_PORT:-63799}"
PG_USER=matchday

log() { printf '\033[1;34m[matchday]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing with apt: $*"
  export DEBIAN_FRONTEND=noninteractive
  # Keep Debian from starting its own clusters/daemons; we run our own below.
  if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    local remove_policy=1
  fi
  as_root apt-get update -qq || true
  as_root apt-get install -y -qq "$@" >/dev/null
  if [ "${remove_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

pg_bindir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then echo "$dir"; fi
  done | sort -V | tail -n 1
}

ensure_packages() {
  local missing=()
  [ -n "$(pg_bindir)" ] || missing+=(postgresql)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The servers must not run as root. As root we use the `postgres` system user
# (created by the Debian package), or create a `matchday` one.
service_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id matchday >/dev/null 2>&1 || useradd --system --no-create-home matchday
  echo matchday
}

run_as() {
  local user="$1"; shift
  if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}

# The directory the servers keep their files in: .data/ itself, unless the
# non-root service user cannot reach it (a checkout under /root, say); then a
# directory under /var/tmp named after the checkout, linked from .data/.
server_dir() {
  local user="$1" name="$2" fallback
  mkdir -p "$DATA_DIR"
  if run_as "$user" test -x "$DATA_DIR"; then
    echo "$DATA_DIR/$name"
    return
  fi
  fallback="/var/tmp/matchday-$(printf '%s' "$MATCHDAY_ROOT" | md5sum | cut -c1-12)"
  mkdir -p "$fallback/$name"
  chmod 755 "$fallback"
  ln -sfn "$fallback/$name" "$DATA_DIR/$name"
  echo "$fallback/$name"
}

start_postgres() {
  local user bindir pgdata logdir
  user="$(service_user)"
  bindir="$(pg_bindir)"
  pgdata="$(server_dir "$user" pg)"
  logdir="$(server_dir "$user" logs)"
  mkdir -p "$logdir"
  chown "$user" "$logdir"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    log "initialising Postgres in $pgdata"
    mkdir -p "$pgdata"
    chown "$user" "$pgdata"
    chmod 700 "$pgdata"
    run_as "$user" "$bindir/initdb" -D "$pgdata" -U "$PG_USER" --auth=trust \
      --encoding=UTF8 --locale=C.UTF-8 >"$logdir/initdb.log" 2>&1
    cat >>"$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$pgdata'
max_connections = 500
shared_buffers = 256MB
# Group commit writes WAL fast enough that the default 1GB brought a
# checkpoint every 10-18 s in a bench ("checkpoints are occurring too
# frequently"), and each one a burst of full-page images.
max_wal_size = 4GB
checkpoint_timeout = 15min
CONF
  fi
  if run_as "$user" "$bindir/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    log "Postgres already running on port $PG_PORT"
  else
    log "starting Postgres on 127.0.0.1:$PG_PORT"
    run_as "$user" "$bindir/pg_ctl" -D "$pgdata" -l "$logdir/postgres.log" -w -t 60 start >/dev/null
  fi
  psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'matchday'" | grep -q 1 \
    || psql_admin -c "CREATE DATABASE matchday" >/dev/null
}

# Drops the databases test runs left behind (each integration test creates
# one named test_<uuid>; FORCE: even if a killed run's replica process still
# holds a connection). Left in place, autovacuum keeps visiting them: an
# executor open loop measured with 145 of them in the cluster had a p50 of
# 643 ms, against about 27 ms without.
drop_test_databases() {
  psql_admin -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'" |
    while read -r db; do [ -n "$db" ] && psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done
}

psql_admin() {
  psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

start_redis() {
  local user rdir
  user="$(service_user)"
  rdir="$(server_dir "$user" redis)"
  mkdir -p "$rdir"
  chown "$user" "$rdir"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "Redis already running on port $REDIS_PORT"
    return
  fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT (AOF everysec)"
  run_as "$user" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$rdir" \
    --appendonly yes --appendfsync everysec --daemonize yes \
    --logfile "$rdir/redis.log" --pidfile "$rdir/redis.pid" --save ''
  for _ in $(seq 1 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  log "Redis did not come up; see $rdir/redis.log"
  return 1
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      log "cargo not found: install Rust (https://rustup.rs) and run again"
      return 1
    fi
  fi
}

# ensure_cargo_tool NAME VERSION: `cargo install NAME` at exactly VERSION
# unless that version is already on PATH (compiled from crates.io: the
# machine reaches the package registries, not GitHub's release downloads).
ensure_cargo_tool() {
  local name="$1" version="$2"
  if ! "$name" --version 2>/dev/null | grep -qF " $version"; then
    log "installing $name $version (cargo install, a few minutes)"
    cargo install "$name" --locked --version "$version"
  fi
}

ensure_services() {
  ensure_packages
  start_postgres
  start_redis
  export MATCHDAY_PG_ADMIN_URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/postgres"
  export MATCHDAY_LOCAL_DATABASE_URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/matchday"
  export MATCHDAY_LOCAL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
}

# The browser tests' tools: Debian's Chromium (driven by playwright-core, so
# no browser download) and Node.js 20 or newer with npm.
# nginx for scripts/cluster and the cluster test (Debian's package, never
# started as a service: each user runs it with a config of its own); sets NGINX.
ensure_nginx() {
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx-light || apt_install nginx
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
}

ensure_browser_tools() {
  local missing=()
  [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=(chromium)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    log "node $(node --version) is too old: playwright-core needs Node.js 20 or newer"
    return 1
  fi
}
