#!/usr/bin/env bash
# The store bench (`cargo bench -p llm-router --bench store`: recorder throughput and
# the aggregation queries at 1 M and 10 M history rows) on PostgreSQL: a throwaway
# server of Debian's `postgresql` package started in a temporary directory
# (scripts/pg.sh), stopped at the end.
#
# The server keeps fsync and synchronous_commit on (the defaults): a durable record is
# on disk when its commit returns, which is what the recorder's figures measure. The one
# setting changed is max_wal_size (4 GB instead of 1 GB), so that the 10 M-row fill
# does not checkpoint every few seconds; the queries are measured after it.
# The bench and the server are not pinned (like the SQLite run of the same bench).
#
# Usage: [BENCH_ROWS=n BENCH_RECORDS=n BENCH_LONE=n] bench/store-pg.sh
# (installs `postgresql` when missing and run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh
if [ -z "$(pg_bin_dir)" ]; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq postgresql >/dev/null; else echo "install postgresql" >&2; exit 1; fi
fi

cargo bench -q -p llm-router --bench store --no-run
trap pg_stop EXIT
pg_start -c max_wal_size=4GB
echo "PostgreSQL $("$(pg_bin_dir)/postgres" --version | awk '{print $3}'), fsync on, synchronous_commit on, shared_buffers $(psql -Atq "$PG_URL" -c 'SHOW shared_buffers')"
BENCH_DATABASE=$PG_URL cargo bench -q -p llm-router --bench store
