#!/usr/bin/env bash
# Many concurrent slow streams: STREAMS clients (default 4,000) each read a stream of 20
# chunks sent 50 ms apart (about a second per request) through nginx, vllm-router (when
# installed) and llm-router (durable recording, the default: anonymous, and under
# --client-auth required with a client key that has an rpm_limit, a tpm_limit and a
# daily budget it never reaches), and directly from the mock node. Each proxy is pinned
# to one core with all its threads; the mock node and wrk share the other (bench/lib.sh).
#
# Per target and round: requests/s, errors, p50/p99, resident memory at its peak during
# the load (sampled every 0.2 s), the memory per open stream ((peak - idle) / STREAMS),
# at the load's end and SETTLE seconds (default 30) after it. "idle" is each target's
# figure before its first load. The targets take turns, ROUNDS times (default 1), and
# the summary is of the medians.
#
# Usage: [STREAMS=n] [ROUNDS=n] [ONLY="target..."] bench/slow-streams.sh [seconds per run, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${1:-20}
STREAMS=${STREAMS:-4000}
ROUNDS=${ROUNDS:-1}
SETTLE=${SETTLE:-30}
need nginx wrk
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# BIN: where the binaries are (set it to compare a build of another target dir; then
# nothing is built here).
if [ -z "${BIN:-}" ]; then cargo build --release -q -p llm-router -p mock-node; fi
BIN=${BIN:-target/release}
WORK=$(mktemp -d)
NGINX_PORT=$(free_port)
cleanup() { kill $(jobs -p) 2>/dev/null || true; stop_nginx "$NGINX_PORT" "$WORK"; rm -rf "$WORK"; }
trap cleanup EXIT

MOCK_PORT=$(free_port); ROUTER_PORT=$(free_port); KEYED_PORT=$(free_port); VLLM_PORT=$(free_port)
spawn_load "$BIN/mock-node" --listen 127.0.0.1:$MOCK_PORT --name slow --chunks 20 --chunk-delay-ms 50 \
  --worker-threads 1 >/dev/null
declare -A PIDS URLS
PIDS[direct]=$!; URLS[direct]=http://127.0.0.1:$MOCK_PORT
wait_http "${URLS[direct]}/v1/models"
PIDS[nginx]=$(start_nginx "$NGINX_PORT" "$MOCK_PORT" "$WORK"); URLS[nginx]=http://127.0.0.1:$NGINX_PORT
router() { # name port args...
  local name=$1 port=$2; shift 2
  spawn_proxy "$BIN/llm-router" --host 127.0.0.1 --port "$port" --data-dir "$WORK/$name" \
    --admin-key bench --node http://127.0.0.1:$MOCK_PORT "$@" >/dev/null
  PIDS[$name]=$!; URLS[$name]=http://127.0.0.1:$port
  wait_http "${URLS[$name]}/health"
}
router router "$ROUTER_PORT"
router router-keyed "$KEYED_PORT" --client-auth required
TARGETS="direct nginx router router-keyed"
if have_vllm_router; then
  start_vllm_router "$VLLM_PORT" "$MOCK_PORT" "$WORK/vllm-router.log"
  PIDS[vllm-router]=$VLLM_PID; URLS[vllm-router]=http://127.0.0.1:$VLLM_PORT
  TARGETS="$TARGETS vllm-router"
fi
# The keyed client's key: limits it never reaches, so that every check runs and none refuses.
CLIENT_KEY=$(curl -sf -X POST "${URLS[router-keyed]}/api/keys" -H 'authorization: Bearer bench' \
  -H 'content-type: application/json' \
  -d '{"name": "bench", "rpm_limit": 100000000, "tpm_limit": 100000000000, "daily_token_budget": 100000000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
wrk_script "$WORK/stream.lua" true
wrk_script "$WORK/stream-keyed.lua" true "$CLIENT_KEY"
# ONLY="router nginx" measures a subset (quicker A/B runs).
if [ -n "${ONLY:-}" ]; then TARGETS=$ONLY; fi
declare -A IDLE
for t in $TARGETS; do IDLE[$t]=$(rss_kb ${PIDS[$t]}); done

echo "$STREAMS concurrent streams of 20 chunks 50 ms apart, ${DURATION}s per run, $ROUNDS round(s);"
echo "proxies pinned to core $CORE_PROXY, mock node and wrk to core $CORE_LOAD; memory in KiB"
header() {
  printf "%-12s %9s %8s %9s %9s %9s %9s %9s %11s %11s\n" target req/s errors p50_ms p99_ms idle peak \
    per_stream "end" "after_${SETTLE}s"
}
header
for round in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    script=stream; [ "$t" = router-keyed ] && script=stream-keyed
    pin_load wrk -t2 -c"$STREAMS" -d"${DURATION}s" --timeout 30s --latency -s "$WORK/$script.lua" \
      "${URLS[$t]}/v1/chat/completions" >"$WORK/wrk.out" &
    wrk_pid=$!
    peak=$(rss_kb ${PIDS[$t]})
    while kill -0 $wrk_pid 2>/dev/null; do
      now=$(rss_kb ${PIDS[$t]}); [ "$now" -gt "$peak" ] && peak=$now
      sleep 0.2
    done
    end=$(rss_kb ${PIDS[$t]})
    sleep "$SETTLE"
    after=$(rss_kb ${PIDS[$t]})
    out=$(cat "$WORK/wrk.out")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errors=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
    p50=${p50:-0}; p99=${p99:-0} # wrk leaves its distribution out when no request finished
    per=$(( (peak - IDLE[$t]) / STREAMS ))
    line=$(printf "%s %.0f %d %.0f %.0f %d %d %d %d %d" "$t" "$rps" "$errors" "$(echo "$p50 / 1000" | bc -l)" \
      "$(echo "$p99 / 1000" | bc -l)" "${IDLE[$t]}" "$peak" "$per" "$end" "$after")
    echo "$line" >>"$WORK/results"
    echo "$line" | awk '{printf "%-12s %9d %8d %9d %9d %9d %9d %9d %11d %11d\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
  done
done
if [ "$ROUNDS" -gt 1 ]; then
  echo; echo "Medians of $ROUNDS rounds:"; header
  medians_by 1 "$WORK/results" | sort |
    awk '{printf "%-12s %9d %8d %9d %9d %9d %9d %9d %11d %11d\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
fi
medians_by 1 "$WORK/results" | awk '{rps[$1] = $2; idle[$1] = $6; peak[$1] = $7; after[$1] = $10}
  END { if ("nginx" in rps) for (t in rps) if (t != "direct" && t != "nginx")
    printf "%-12s %.2fx nginx requests/s, peak memory %.2fx nginx, %.2fx its idle figure %s s after the load\n",
      t, rps[t] / rps["nginx"], peak[t] / peak["nginx"], after[t] / idle[t], "'"$SETTLE"'" }'
