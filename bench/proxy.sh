#!/usr/bin/env bash
# Router overhead benchmark: the same load (wrk, 32 connections) sent directly to a mock
# node, through nginx (the plain-proxy floor) and through llm-router (accounting and
# durable recording on, then --durability async, then durable with a client key that
# has an rpm_limit and a daily budget, under --client-auth required), plain and
# streamed, in one run. Prints requests/s, p50, p99 and the CPU time per request of
# the target's processes (from /proc) per target, and the router's ratios to nginx and
# direct.
#
# The targets take turns, ROUNDS times (default 3), and the figures are the medians of
# the rounds: a shared machine's speed drifts within minutes, and one pass in a fixed
# order gave whichever target ran in a fast phase a better ratio.
#
# Needs: nginx and wrk (Debian packages; installed if missing and run as root).
# Usage: [ROUNDS=n] bench/proxy.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}
CONNS=32
THREADS=2

for pkg in nginx wrk; do
  if ! command -v "$pkg" >/dev/null && ! [ -x "/usr/sbin/$pkg" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq "$pkg" >/dev/null; else echo "install $pkg" >&2; exit 1; fi
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p llm-router -p mock-node
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; "$NGINX" -p "$WORK" -c nginx.conf -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port); NGINX_PORT=$(free_port); ROUTER_PORT=$(free_port); ASYNC_PORT=$(free_port)
KEYED_PORT=$(free_port)

# One thread (the mock's default): it shares the 2 cores with what it measures.
./target/release/mock-node --listen 127.0.0.1:$MOCK_PORT --name bench --chunks 5 --worker-threads 1 >/dev/null &
MOCK_PID=$!
sleep 0.3
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/error.log;
pid $WORK/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  upstream node { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
"$NGINX" -p "$WORK" -c nginx.conf
LLM_ROUTER_LOG=warn ./target/release/llm-router --host 127.0.0.1 --port $ROUTER_PORT --data-dir "$WORK/durable" \
  --admin-key bench --node http://127.0.0.1:$MOCK_PORT >/dev/null &
ROUTER_PID=$!
LLM_ROUTER_LOG=warn ./target/release/llm-router --host 127.0.0.1 --port $ASYNC_PORT --data-dir "$WORK/async" \
  --admin-key bench --durability async --node http://127.0.0.1:$MOCK_PORT >/dev/null &
ASYNC_PID=$!
LLM_ROUTER_LOG=warn ./target/release/llm-router --host 127.0.0.1 --port $KEYED_PORT --data-dir "$WORK/keyed" \
  --admin-key bench --client-auth required --node http://127.0.0.1:$MOCK_PORT >/dev/null &
KEYED_PID=$!
for p in $ROUTER_PORT $ASYNC_PORT $KEYED_PORT; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$p/health" >/dev/null && break; sleep 0.1; done
done
# The keyed client's key: limits it never reaches, so that every check runs and none refuses.
CLIENT_KEY=$(curl -sf -X POST "http://127.0.0.1:$KEYED_PORT/api/keys" -H 'authorization: Bearer bench' \
  -H 'content-type: application/json' \
  -d '{"name": "bench", "rpm_limit": 100000000, "tpm_limit": 100000000000, "daily_token_budget": 100000000000}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
NGINX_PID=$(cat "$WORK/nginx.pid")

lua() { # name stream [client key]
  cat >"$WORK/$1.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"mock-model","stream":$2,"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
LUA
  [ -n "${3:-}" ] && echo "wrk.headers[\"Authorization\"] = \"Bearer $3\"" >>"$WORK/$1.lua"
  return 0
}
lua plain false
lua stream true
lua plain-keyed false "$CLIENT_KEY"
lua stream-keyed true "$CLIENT_KEY"

# CPU time (user + system, in clock ticks) of a process and its children threads.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
HZ=$(getconf CLK_TCK)

# wrk's latency distribution in microseconds: "50%    1.23ms" -> 1230.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else {sub(/s/,"",v); print v*1000000}}'; }
run() { # name url script pids [connections]
  local out rps p50 p99 requests cpu before conns=${5:-$CONNS} threads=$THREADS mode=${3%-keyed}
  [ "$conns" -lt "$threads" ] && threads=$conns
  before=$(ticks $4)
  out=$(wrk -t$threads -c$conns -d"${DURATION}s" --latency -s "$WORK/$3.lua" "$2/v1/chat/completions")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  cpu=$(awk -v t=$(( $(ticks $4) - before )) -v n="$requests" -v hz="$HZ" 'BEGIN {printf "%.1f", t * 1000000 / hz / n}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  printf "%-8s %-16s %10.0f %10.0f %10.0f %10.1f  %s\n" "$mode" "$1" "$rps" "$p50" "$p99" "$cpu" "$errors"
  echo "$mode $1 $rps $p50 $p99 $cpu" >>"$WORK/results${5:-}"
}

# The median of each figure over the rounds: "mode target rps p50 p99 cpu" lines in, the
# same with medians out (mawk has no sort, hence the insertion sort).
medians() {
  awk '{ k = $1" "$2; n[k]++; for (f = 3; f <= 6; f++) v[k, f, n[k]] = $f }
    END { for (k in n) { line = k
      for (f = 3; f <= 6; f++) {
        for (i = 1; i <= n[k]; i++) a[i] = v[k, f, i]
        for (i = 2; i <= n[k]; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
        m = (n[k] % 2) ? a[(n[k] + 1) / 2] : (a[n[k] / 2] + a[n[k] / 2 + 1]) / 2
        line = line " " m }
      print line } }' "$1"
}
rounds() { # [connections]
  for round in $(seq "$ROUNDS"); do
    for mode in plain stream; do
      run direct "http://127.0.0.1:$MOCK_PORT" $mode "$MOCK_PID" "$@"
      run nginx "http://127.0.0.1:$NGINX_PORT" $mode "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" "$@"
      run router "http://127.0.0.1:$ROUTER_PORT" $mode "$ROUTER_PID" "$@"
      run router-async "http://127.0.0.1:$ASYNC_PORT" $mode "$ASYNC_PID" "$@"
      run router-keyed "http://127.0.0.1:$KEYED_PORT" $mode-keyed "$KEYED_PID" "$@"
    done
  done
}
print_medians() { # results file
  echo "Medians of $ROUNDS rounds:"
  printf "%-8s %-16s %10s %10s %10s %10s\n" mode target req/s p50_us p99_us cpu_us/req
  medians "$1" | sort -k1,1 -k2,2 | awk '{printf "%-8s %-16s %10.0f %10.0f %10.0f %10.1f\n", $1, $2, $3, $4, $5, $6}'
  medians "$1" >"$1.median"
}

echo "wrk -t$THREADS -c$CONNS -d${DURATION}s, $(nproc) cores, $ROUNDS rounds; latencies in microseconds;"
echo "cpu_us/req: CPU time of the target's processes (direct: the mock node alone) per request"
printf "%-8s %-16s %10s %10s %10s %10s\n" mode target req/s p50_us p99_us cpu_us/req
rounds
echo
print_medians "$WORK/results"

echo
echo "Ratios (router = durable recording, the default):"
awk '{rps[$1" "$2]=$3; p50[$1" "$2]=$4; p99[$1" "$2]=$5; cpu[$1" "$2]=$6}
  END { split("plain stream", modes, " "); split("router router-async router-keyed", targets, " ");
    for (i = 1; i <= 2; i++) { m = modes[i];
      for (j = 1; j <= 3; j++) { t = targets[j];
        printf "%-6s %-13s throughput %.2fx nginx, %.2fx direct; added p50 %+.0f us, added p99 %+.0f us (vs direct)\n",
          m, t, rps[m" "t]/rps[m" nginx"], rps[m" "t]/rps[m" direct"], p50[m" "t]-p50[m" direct"], p99[m" "t]-p99[m" direct"] }
      printf "%-6s client key and limits: %+.1f us CPU per request, throughput %.2fx the anonymous router\n",
        m, cpu[m" router-keyed"]-cpu[m" router"], rps[m" router-keyed"]/rps[m" router"] } }' "$WORK/results.median"
echo
echo "Per-request overhead without queueing (1 connection, one request at a time):"
printf "%-8s %-16s %10s %10s %10s %10s\n" mode target req/s p50_us p99_us cpu_us/req
rounds 1
echo
print_medians "$WORK/results1"
awk '{p50[$1" "$2]=$4; p99[$1" "$2]=$5}
  END { split("plain stream", modes, " ");
    for (i = 1; i <= 2; i++) { m = modes[i];
      printf "%-6s added vs direct: router p50 %+.0f us p99 %+.0f us; router-async p50 %+.0f us p99 %+.0f us; router-keyed p50 %+.0f us p99 %+.0f us; nginx p50 %+.0f us p99 %+.0f us\n",
        m, p50[m" router"]-p50[m" direct"], p99[m" router"]-p99[m" direct"],
        p50[m" router-async"]-p50[m" direct"], p99[m" router-async"]-p99[m" direct"],
        p50[m" router-keyed"]-p50[m" direct"], p99[m" router-keyed"]-p99[m" direct"],
        p50[m" nginx"]-p50[m" direct"], p99[m" nginx"]-p99[m" direct"] } }' "$WORK/results1.median"
records=$(curl -s -H 'authorization: Bearer bench' "http://127.0.0.1:$ROUTER_PORT/api/dashboard/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_requests"])')
echo "records committed by the durable router: $records"
keyed=$(curl -s -H 'authorization: Bearer bench' "http://127.0.0.1:$KEYED_PORT/api/dashboard/keys" | python3 -c 'import json,sys; k=json.load(sys.stdin)["keys"][0]; print(k["total_requests"], k["total_tokens"])')
echo "requests and tokens counted for the keyed client: $keyed"
