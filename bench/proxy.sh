#!/usr/bin/env bash
# Router overhead benchmark: the same load (wrk, 32 connections, then 1) sent directly to
# a mock node, through nginx (the plain-proxy floor), through vllm-router (a Rust LLM
# router from PyPI, when installed) and through llm-router: durable recording (the
# default), --durability async, and durable under --client-auth required with a client
# key that has an rpm_limit, a tpm_limit and a daily budget, and durable with
# --store-bodies (router-bodies: every request's body and answer kept). Plain and
# streamed, in one run. With PostgreSQL installed (Debian's `postgresql`), also the router on PostgreSQL
# (durable): one replica alone (router-pg), the same replica behind nginx
# (lb-router-pg: what the balancer in front costs) and two replicas on the one database
# behind that nginx, round robin (lb-2-routers-pg). The server (scripts/pg.sh, fsync on)
# runs on the load's core, so that the proxy core holds the routers and nginx only;
# its own CPU per request is reported apart (db_us/req). PG=0 leaves it out.
#
# Each proxy runs pinned to one core with all its threads; the mock node and wrk share
# the other (bench/lib.sh). Per target: requests/s, p50, p99, the CPU time of the
# target's processes per request (from /proc; for "direct", the mock node's), and its
# resident memory idle, at its peak and after the load.
#
# The targets take turns, ROUNDS times (default 3), and the figures are the medians of
# the rounds: a shared machine's speed drifts within minutes, and one pass in a fixed
# order gave whichever target ran in a fast phase a better ratio.
#
# Needs: nginx and wrk (Debian packages; installed if missing and run as root);
# vllm-router is measured when `vllm-router` is on the PATH (pip install vllm-router).
# Usage: [ROUNDS=n] [ONLY="target..."] [PG=0] bench/proxy.sh [seconds per run, default 10]
# (ONLY: the targets measured besides direct and nginx, e.g. ONLY="router router-pg")
# PIDS values are lists of pids (nginx's master and worker, two replicas): split on purpose.
# shellcheck disable=SC2086
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
. scripts/pg.sh
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
CONNS=32
THREADS=2
need nginx wrk

# BIN: where the binaries are (set it to compare a build of another target dir; then
# nothing is built here).
if [ -z "${BIN:-}" ]; then cargo build --release -q -p llm-router -p mock-node; fi
BIN=${BIN:-target/release}
WORK=$(mktemp -d)
NGINX_PORT=$(free_port)
LB1_PORT=$(free_port); LB2_PORT=$(free_port)
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  for port in "$NGINX_PORT" "$LB1_PORT" "$LB2_PORT"; do stop_nginx "$port" "$WORK"; done
  pg_stop; rm -rf "$WORK"
}
trap cleanup EXIT

MOCK_PORT=$(free_port); ROUTER_PORT=$(free_port); ASYNC_PORT=$(free_port); KEYED_PORT=$(free_port)
BODIES_PORT=$(free_port)
VLLM_PORT=$(free_port); PG_PORT=$(free_port); PG_B_PORT=$(free_port)

# One thread (the mock's default): it shares its core with wrk.
spawn_load "$BIN/mock-node" --listen "127.0.0.1:$MOCK_PORT" --name bench --chunks 5 --worker-threads 1 >/dev/null
declare -A PIDS URLS LB_PIDS
PIDS[direct]=$!; URLS[direct]=http://127.0.0.1:$MOCK_PORT
wait_http "${URLS[direct]}/v1/models"
PIDS[nginx]=$(start_nginx "$NGINX_PORT" "$MOCK_PORT" "$WORK"); URLS[nginx]=http://127.0.0.1:$NGINX_PORT
router() { # name port args...
  local name=$1 port=$2; shift 2
  spawn_proxy "$BIN/llm-router" --host 127.0.0.1 --port "$port" --data-dir "$WORK/$name" \
    --admin-key bench --node "http://127.0.0.1:$MOCK_PORT" "$@" >/dev/null
  PIDS[$name]=$!; URLS[$name]=http://127.0.0.1:$port
  wait_http "${URLS[$name]}/health"
}
router router "$ROUTER_PORT"
router router-async "$ASYNC_PORT" --durability async
router router-keyed "$KEYED_PORT" --client-auth required
router router-bodies "$BODIES_PORT" --store-bodies
TARGETS="direct nginx router router-async router-keyed router-bodies"
if have_vllm_router; then
  start_vllm_router "$VLLM_PORT" "$MOCK_PORT" "$WORK/vllm-router.log"
  PIDS[vllm-router]=$VLLM_PID; URLS[vllm-router]=http://127.0.0.1:$VLLM_PORT
  TARGETS="$TARGETS vllm-router"
else
  echo "(vllm-router not installed: pip install vllm-router to measure it too)"
fi
if [ -z "${PG:-}" ]; then PG=0; [ -n "$(pg_bin_dir)" ] && PG=1; fi
if [ "$PG" = 1 ]; then
  PG_WRAP=(taskset -c "$CORE_LOAD")
  # shellcheck disable=SC2119 # no server options: its defaults, fsync on
  pg_start
  psql -q "$PG_URL" -c 'CREATE DATABASE llm_router'
  DB_URL=${PG_URL%/postgres}/llm_router
  router router-pg "$PG_PORT" --database-url "$DB_URL"
  router router-pg-b "$PG_B_PORT" --database-url "$DB_URL"
  PIDS[lb-router-pg]=${PIDS[router-pg]}; URLS[lb-router-pg]=http://127.0.0.1:$LB1_PORT
  LB_PIDS[lb-router-pg]=$(start_nginx "$LB1_PORT" "$PG_PORT" "$WORK")
  PIDS[lb-2-routers-pg]="${PIDS[router-pg]} ${PIDS[router-pg-b]}"; URLS[lb-2-routers-pg]=http://127.0.0.1:$LB2_PORT
  LB_PIDS[lb-2-routers-pg]=$(start_nginx "$LB2_PORT" "$PG_PORT $PG_B_PORT" "$WORK")
  TARGETS="$TARGETS router-pg lb-router-pg lb-2-routers-pg"
else
  echo "(PostgreSQL not installed: apt-get install postgresql to measure the router on it too)"
fi
if [ -n "${ONLY:-}" ]; then
  TARGETS="direct nginx $(for t in $TARGETS; do
    if [[ " $ONLY " == *" $t "* && $t != direct && $t != nginx ]]; then echo "$t"; fi
  done | tr '\n' ' ')"
fi
# The keyed client's key: limits it never reaches, so that every check runs and none refuses.
CLIENT_KEY=$(curl -sf -X POST "${URLS[router-keyed]}/api/keys" -H 'authorization: Bearer bench' \
  -H 'content-type: application/json' \
  -d '{"name": "bench", "rpm_limit": 100000000, "tpm_limit": 100000000000, "daily_token_budget": 100000000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
declare -A IDLE
for t in $TARGETS; do IDLE[$t]=$(rss_kb ${PIDS[$t]}); done

wrk_script "$WORK/plain.lua" false
wrk_script "$WORK/stream.lua" true
wrk_script "$WORK/plain-keyed.lua" false "$CLIENT_KEY"
wrk_script "$WORK/stream-keyed.lua" true "$CLIENT_KEY"

# CPU time of the PostgreSQL server (every backend), 0 without it.
db_ticks() { if [ "$PG" = 1 ]; then tree_ticks "$PG_PID"; else echo 0; fi; }
run() { # target mode [connections]
  local out rps p50 p99 requests cpu lb db before lb_before db_before conns=${3:-$CONNS} threads=$THREADS script=$2
  [ "$conns" -lt "$threads" ] && threads=$conns
  [ "$1" = router-keyed ] && script=$2-keyed
  before=$(ticks ${PIDS[$1]}); lb_before=$(ticks ${LB_PIDS[$1]:-}); db_before=$(db_ticks)
  out=$(pin_load wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "$WORK/$script.lua" "${URLS[$1]}/v1/chat/completions")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  per_request() { awk -v t="$1" -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.1f", t * 1000000 / hz / n}'; }
  cpu=$(per_request $(( $(ticks ${PIDS[$1]}) - before )))
  lb=$(per_request $(( $(ticks ${LB_PIDS[$1]:-}) - lb_before )))
  db=0; [[ $1 == *-pg ]] && db=$(per_request $(( $(db_ticks) - db_before )))
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  printf "%-8s %-16s %10.0f %10.0f %10.0f %10.1f %9.1f %9.1f  %s\n" "$2" "$1" "$rps" "$p50" "$p99" "$cpu" "$lb" "$db" "$errors"
  echo "$2 $1 $rps $p50 $p99 $cpu $lb $db" >>"$WORK/results${3:-}"
}

rounds() { # [connections]
  for _ in $(seq "$ROUNDS"); do
    for mode in plain stream; do
      for t in $TARGETS; do run "$t" $mode "$@"; done
    done
  done
}
header() { printf "%-8s %-16s %10s %10s %10s %10s %9s %9s\n" mode target req/s p50_us p99_us cpu_us/req lb_us/req db_us/req; }
print_medians() { # results file
  echo "Medians of $ROUNDS rounds:"
  header
  medians_by 2 "$1" | sort -k1,1 -k2,2 | awk '{printf "%-8s %-16s %10.0f %10.0f %10.0f %10.1f %9s %9s\n", $1, $2, $3, $4, $5, $6,
    ($7 > 0) ? sprintf("%.1f", $7) : "-", ($8 > 0) ? sprintf("%.1f", $8) : "-"}'
  medians_by 2 "$1" >"$1.median"
}

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, $(nproc) cores, $ROUNDS rounds; proxies pinned to core $CORE_PROXY,"
echo "mock node and wrk to core $CORE_LOAD; latencies in microseconds; cpu_us/req: CPU time of the"
echo "target's processes per request (direct: the mock node's own; lb-*: the routers' own), lb_us/req:"
echo "the nginx in front of lb-* targets, db_us/req: the PostgreSQL server's (every backend)"
header
rounds
echo
print_medians "$WORK/results"

echo
echo "Ratios (router = durable recording, the default; a streamed request is 5 content chunks):"
awk -v targets="$TARGETS" '{rps[$1" "$2]=$3; p50[$1" "$2]=$4; p99[$1" "$2]=$5; cpu[$1" "$2]=$6; db[$1" "$2]=$8}
  END { split("plain stream", modes, " "); n = split(targets, ts, " ");
    for (i = 1; i <= 2; i++) { m = modes[i];
      for (j = 3; j <= n; j++) { t = ts[j];
        printf "%-6s %-16s throughput %.2fx nginx, %.2fx direct; CPU %.1f us/request (nginx %.1f)%s\n",
          m, t, rps[m" "t]/rps[m" nginx"], rps[m" "t]/rps[m" direct"], cpu[m" "t], cpu[m" nginx"],
          (m == "stream") ? sprintf(", %.1f us/chunk (nginx %.1f)", cpu[m" "t] / 5, cpu[m" nginx"] / 5) : "" }
      if ((m" router-keyed") in rps && (m" router") in rps)
        printf "%-6s client key and limits: %+.1f us CPU per request, throughput %.2fx the anonymous router\n",
          m, cpu[m" router-keyed"]-cpu[m" router"], rps[m" router-keyed"]/rps[m" router"]
      if ((m" router-pg") in rps && (m" router") in rps)
        printf "%-6s PostgreSQL instead of SQLite: throughput %.2fx, router CPU %+.1f us/request, server %.1f us/request\n",
          m, rps[m" router-pg"]/rps[m" router"], cpu[m" router-pg"]-cpu[m" router"], db[m" router-pg"]
      if ((m" lb-2-routers-pg") in rps)
        printf "%-6s two replicas behind nginx: throughput %.2fx one replica behind it, %.2fx one alone\n",
          m, rps[m" lb-2-routers-pg"]/rps[m" lb-router-pg"], rps[m" lb-2-routers-pg"]/rps[m" router-pg"] } }' "$WORK/results.median"
echo
echo "Per-request overhead without queueing (1 connection, one request at a time):"
header
rounds 1
echo
print_medians "$WORK/results1"
awk -v targets="$TARGETS" '{p50[$1" "$2]=$4; p99[$1" "$2]=$5}
  END { split("plain stream", modes, " "); n = split(targets, ts, " ");
    for (i = 1; i <= 2; i++) { m = modes[i]; line = m " added vs direct:"
      for (j = 2; j <= n; j++) { t = ts[j];
        line = line sprintf(" %s p50 %+.0f us p99 %+.0f us;", t, p50[m" "t]-p50[m" direct"], p99[m" "t]-p99[m" direct"]) }
      print line } }' "$WORK/results1.median"

echo
echo "Resident memory (KiB): idle before the load, peak, and at the end"
printf "%-16s %10s %10s %10s\n" target idle peak end
for t in $TARGETS; do
  printf "%-16s %10d %10d %10d\n" "$t" "${IDLE[$t]}" "$(hwm_kb ${PIDS[$t]})" "$(rss_kb ${PIDS[$t]})"
done
records=$(curl -s -H 'authorization: Bearer bench' "${URLS[router]}/api/dashboard/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_requests"])')
echo "records committed by the durable router: $records"
keyed=$(curl -s -H 'authorization: Bearer bench' "${URLS[router-keyed]}/api/dashboard/keys" | python3 -c 'import json,sys; k=json.load(sys.stdin)["keys"][0]; print(k["total_requests"], "requests,", k["total_tokens"], "tokens")')
echo "counted for the keyed client: $keyed"
if [ "$PG" = 1 ]; then
  echo "records committed on PostgreSQL (both replicas): $(psql -Atq "$DB_URL" -c 'SELECT COUNT(*) FROM request_history')"
fi
