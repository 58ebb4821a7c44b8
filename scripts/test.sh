#!/usr/bin/env bash
# Runs every test of the workspace: unit, acceptance (real router, real mock nodes),
# and the dashboard's end-to-end tests in headless Chromium; then the store's unit
# tests and the acceptance suite again on PostgreSQL.
# Installs what the tests need when it is missing and this user may install it:
# the sqlite3 CLI, PostgreSQL, Chromium + ChromeDriver (Debian) and the openai,
# ollama and anthropic Python SDKs (PyPI).
#
# PostgreSQL: a server of Debian's `postgresql` package started in a temporary
# directory as an unprivileged user (`postgres` when run as root), on a free local
# port, and stopped at the end. LLM_ROUTER_TEST_DATABASE=postgres://…/postgres uses
# a server of yours instead; LLM_ROUTER_TEST_DATABASE=skip runs SQLite only.
set -euo pipefail
cd "$(dirname "$0")/.."

missing_debs=()
command -v sqlite3 >/dev/null || missing_debs+=(sqlite3)
command -v chromium >/dev/null || missing_debs+=(chromium)
. scripts/pg.sh
if [ -z "${LLM_ROUTER_TEST_DATABASE:-}" ] && { [ -z "$(pg_bin_dir)" ] || ! command -v psql >/dev/null; }; then
  missing_debs+=(postgresql)
fi
command -v chromedriver >/dev/null || missing_debs+=(chromium-driver)
if [ ${#missing_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
  else
    echo "missing Debian packages: ${missing_debs[*]} (install them, then rerun)" >&2
    exit 1
  fi
fi
if ! python3 -c 'import openai, ollama, anthropic' 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  # Debian's own Python refuses global installs (PEP 668) unless told otherwise.
  sdks=(openai ollama anthropic)
  python3 -m pip install -q "${sdks[@]}" 2>/dev/null || python3 -m pip install -q --break-system-packages "${sdks[@]}"
fi

# Every test on SQLite (the default engine), but those about PostgreSQL alone (replicas
# on one database, the PostgreSQL writer and migrations, moving between engines), which
# fail without a server and run in the PostgreSQL pass below.
LLM_ROUTER_TEST_DATABASE='' cargo test --workspace "$@" -- --skip replicas:: --skip replica_limits:: \
  --skip store::postgres:: \
  --skip store::migrate::tests::postgres_ --skip store::migrate::tests::sqlite_to_postgres

if [ "${LLM_ROUTER_TEST_DATABASE:-}" = skip ]; then
  exit 0
fi
if [ -z "${LLM_ROUTER_TEST_DATABASE:-}" ]; then
  trap pg_stop EXIT
  # A throw-away server: no fsync (the tests kill routers, never this server).
  pg_start -c max_connections=500 -c fsync=off
  LLM_ROUTER_TEST_DATABASE=$PG_URL
fi
export LLM_ROUTER_TEST_DATABASE
# The store's and the recorder's unit tests run on both engines when the variable is set.
cargo test -p llm-router --lib "$@" -- store:: recorder::
cargo test -p llm-router --test acceptance "$@"
