#!/usr/bin/env bash
# A/B of two router builds against one mock node, taking turns (pinned like
# bench/proxy.sh): requests/s and CPU µs per request of each, plain and streamed.
# Usage: bench/ab.sh DIR_A DIR_B [seconds per run, default 5]   (ROUNDS=n, default 3)
# Each DIR holds an llm-router binary (DIR_A's mock-node serves both); ARGS_A and
# ARGS_B add flags to either router (the same binary twice compares two settings).
# CORE_PROXY=0,1 CORE_LOAD=0,1 runs everything unpinned.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
A=$1; B=$2; DURATION=${3:-5}; ROUNDS=${ROUNDS:-3}
need wrk
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
MOCK_PORT=$(free_port)
spawn_load "$A/mock-node" --listen 127.0.0.1:$MOCK_PORT --name ab --chunks 5 --worker-threads 1 >/dev/null
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models"
declare -A PID PORT
for side in A B; do
  dir=${!side}; PORT[$side]=$(free_port)
  extra=ARGS_$side
  # shellcheck disable=SC2086
  spawn_proxy "$dir/llm-router" --host 127.0.0.1 --port "${PORT[$side]}" --data-dir "$WORK/$side" \
    --admin-key ab --node http://127.0.0.1:$MOCK_PORT ${!extra:-} >/dev/null
  PID[$side]=$!
  wait_http "http://127.0.0.1:${PORT[$side]}/health"
done
wrk_script "$WORK/plain.lua" false
wrk_script "$WORK/stream.lua" true
printf "%-7s %-6s %5s %10s %10s\n" mode side round req/s cpu_us/req
for round in $(seq "$ROUNDS"); do
  for mode in plain stream; do
    for side in A B; do
      before=$(ticks ${PID[$side]})
      out=$(pin_load wrk -t2 -c32 -d"${DURATION}s" -s "$WORK/$mode.lua" "http://127.0.0.1:${PORT[$side]}/v1/chat/completions")
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      cpu=$(awk -v t=$(( $(ticks ${PID[$side]}) - before )) -v n="$n" -v hz="$HZ" 'BEGIN {printf "%.1f", t * 1000000 / hz / n}')
      printf "%-7s %-6s %5d %10.0f %10.1f\n" $mode $side "$round" "$rps" "$cpu" | tee -a "$WORK/r"
    done
  done
done
echo "medians (B / A):"
for mode in plain stream; do
  for side in A B; do
    awk -v m=$mode -v s=$side '$1 == m && $2 == s {print $4, $5}' "$WORK/r" | sort -n | awk -v m=$mode -v s=$side \
      '{r[NR] = $1} END {printf "%-7s %-2s median %.0f req/s\n", m, s, r[int((NR + 1) / 2)]}'
  done
done
