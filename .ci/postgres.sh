#!/usr/bin/env bash
# A throwaway PostgreSQL server for the multi-machine tuning test (tests/test_tune.py).
#
#   source .ci/postgres.sh          start (installing Debian's postgresql if missing), export MSABENCH_TEST_PG_URL
#   eval "$(.ci/postgres.sh)"       the same, when run as a program (it prints the export lines)
#   .ci/postgres.sh stop            stop the server started in this shell (uses MSABENCH_TEST_PG_DIR) and remove it
#
# The cluster lives in a temporary directory, listens on 127.0.0.1 on a free port with trust authentication,
# and runs as the postgres system user when we are root. Safe under `set -euo pipefail`; it returns non-zero
# (and says why on stderr) when the server cannot start.

_msabench_pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bin" ] && command -v initdb >/dev/null 2>&1; then
    bin=$(dirname "$(command -v initdb)")
  fi
  echo "$bin"
}

_msabench_pg_as() {  # run a command as the server's owner
  if [ "$(id -u)" = "0" ]; then
    if command -v runuser >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

_msabench_pg_start() {
  local bin dir port url
  if [ -n "${MSABENCH_TEST_PG_URL:-}" ]; then
    echo "postgres.sh: MSABENCH_TEST_PG_URL already set ($MSABENCH_TEST_PG_URL); nothing to do" >&2
    return 0
  fi
  bin=$(_msabench_pg_bin)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "postgres.sh: installing postgresql with apt-get" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; then
      echo "postgres.sh: apt-get install postgresql failed" >&2
      return 1
    fi
    bin=$(_msabench_pg_bin)
  fi
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "postgres.sh: no initdb found under /usr/lib/postgresql/*/bin" >&2
    return 1
  fi
  if [ "$(id -u)" = "0" ] && ! id postgres >/dev/null 2>&1; then
    echo "postgres.sh: running as root but there is no postgres system user" >&2
    return 1
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/msabench-pg.XXXXXX") || return 1
  chmod 755 "$dir"
  if [ "$(id -u)" = "0" ]; then chown postgres: "$dir"; fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || return 1
  if ! _msabench_pg_as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
    echo "postgres.sh: initdb failed; see $dir/initdb.log:" >&2
    tail -n 20 "$dir/initdb.log" >&2
    return 1
  fi
  if ! _msabench_pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" start >/dev/null; then
    echo "postgres.sh: the server did not start; see $dir/server.log:" >&2
    tail -n 20 "$dir/server.log" >&2
    return 1
  fi
  if ! _msabench_pg_as "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres msabench_test; then
    echo "postgres.sh: createdb failed" >&2
    return 1
  fi
  url="postgresql://postgres@127.0.0.1:$port/msabench_test"
  export MSABENCH_TEST_PG_URL="$url"
  export MSABENCH_TEST_PG_DIR="$dir"
  echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data $dir);" \
       "stop it with: .ci/postgres.sh stop" >&2
  echo "export MSABENCH_TEST_PG_URL=$url"
  echo "export MSABENCH_TEST_PG_DIR=$dir"
}

_msabench_pg_stop() {
  local dir="${1:-${MSABENCH_TEST_PG_DIR:-}}" bin
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then
    echo "postgres.sh: no server directory given (MSABENCH_TEST_PG_DIR is unset)" >&2
    return 1
  fi
  bin=$(_msabench_pg_bin)
  _msabench_pg_as "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || return 1
  rm -rf "$dir"
  unset MSABENCH_TEST_PG_URL MSABENCH_TEST_PG_DIR
  echo "postgres.sh: stopped and removed $dir" >&2
}

_msabench_pg_main() {
  case "${1:-start}" in
    start) _msabench_pg_start ;;
    stop) shift; _msabench_pg_stop "$@" ;;
    *) echo "usage: source .ci/postgres.sh | .ci/postgres.sh [start|stop [DIR]]" >&2; return 2 ;;
  esac
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # sourced: the variables are exported into the caller's shell; the caller's own arguments are not ours
  case "${1:-}" in
    start|stop) _msabench_pg_main "$@" >/dev/null ;;
    *) _msabench_pg_main start >/dev/null ;;
  esac
else
  _msabench_pg_main "$@"
fi
