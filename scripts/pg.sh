#!/usr/bin/env bash
# A throwaway PostgreSQL server (sourced, not run; by scripts/test.sh and the
# benchmarks): Debian's `postgresql` package, a cluster made in a temporary directory,
# run as an unprivileged user (`postgres` when run as root: PostgreSQL refuses root)
# on a free local port, with trust authentication. Nothing outside the directory is
# touched, and pg_stop removes it.
#
#   pg_start [server option...]   e.g. pg_start -c fsync=off; sets PG_DIR, PG_URL
#                                  (postgres://postgres@127.0.0.1:PORT/postgres), PG_PID
#   pg_stop                        stops the server, removes PG_DIR
#
# PG_WRAP (an array, empty by default) prefixes the server's start, e.g.
# PG_WRAP=(taskset -c 1) pins the server and every backend it forks to core 1.

# The newest installed server's binaries, empty when none is.
pg_bin_dir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1; }

pg_start() {
  local bin port
  bin=$(pg_bin_dir)
  if [ -z "$bin" ]; then echo "PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2; return 1; fi
  PG_DIR=$(mktemp -d /tmp/llm-router-pg.XXXXXX)
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    PG_AS=(runuser -u postgres --)
    chown postgres "$PG_DIR"
  fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${PG_AS[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres -A trust >"$PG_DIR/initdb.log"
  "${PG_WRAP[@]}" "${PG_AS[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-k $PG_DIR -p $port -c listen_addresses=127.0.0.1 $*" start >/dev/null
  # shellcheck disable=SC2034 # read by the scripts that source this file
  PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid")
  # shellcheck disable=SC2034
  PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  "${PG_AS[@]}" "$(pg_bin_dir)/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}

[ -n "${PG_WRAP+set}" ] || PG_WRAP=()
