#!/usr/bin/env bash
# Shared parts of the benchmark scripts (sourced, not run): ports, pinning, starting the
# targets, and reading a process's CPU time and memory from /proc.
#
# Pinning: every proxy measured (the router with all its threads, nginx, vllm-router)
# runs on core $CORE_PROXY; the mock node and the load generator share the other core
# ($CORE_LOAD), so that what a proxy costs is what its one core can do.

CORE_PROXY=${CORE_PROXY:-0}
CORE_LOAD=${CORE_LOAD:-1}
if [ "$(nproc)" -lt 2 ]; then CORE_LOAD=$CORE_PROXY; fi
pin_proxy() { taskset -c "$CORE_PROXY" "$@"; }
pin_load() { taskset -c "$CORE_LOAD" "$@"; }
# Starts a command in the background on a core; $! is then the command's own pid (the
# subshell execs into it), which is what /proc is read for.
spawn_proxy() { (exec taskset -c "$CORE_PROXY" "$@") & }
spawn_load() { (exec taskset -c "$CORE_LOAD" "$@") & }
export LLM_ROUTER_LOG=warn

need() { # Debian packages, installed when missing and run as root
  for pkg in "$@"; do
    if ! command -v "$pkg" >/dev/null && ! [ -x "/usr/sbin/$pkg" ]; then
      if [ "$(id -u)" = 0 ]; then apt-get install -y -qq "$pkg" >/dev/null; else echo "install $pkg" >&2; exit 1; fi
    fi
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url
  for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

# nginx as a plain reverse proxy on port $1 of 127.0.0.1:<port> for each port in $2 (two
# or more: round robin), one worker; prints its pids.
start_nginx() { # port "upstream_port..." workdir
  local nginx servers="" p; nginx=$(command -v nginx || echo /usr/sbin/nginx)
  for p in $2; do servers="$servers server 127.0.0.1:$p;"; done
  cat >"$3/nginx-$1.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 100000;
error_log $3/nginx-$1.error.log;
pid $3/nginx-$1.pid;
events { worker_connections 20000; }
http {
  access_log off;
  upstream node { $servers keepalive 64; }
  server {
    listen 127.0.0.1:$1 backlog=4096;
    location / {
      proxy_pass http://node;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
  pin_proxy "$nginx" -p "$3" -c "nginx-$1.conf"
  sleep 0.2
  local master; master=$(cat "$3/nginx-$1.pid")
  echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
}

stop_nginx() { # port workdir
  local nginx; nginx=$(command -v nginx || echo /usr/sbin/nginx)
  "$nginx" -p "$2" -c "nginx-$1.conf" -s stop 2>/dev/null || true
}

# vllm-router (PyPI `vllm-router`, a Rust router) in front of one node, when installed.
have_vllm_router() { command -v vllm-router >/dev/null; }
# Starts vllm-router on port $1 in front of the node on port $2 (log in $3), pinned like
# the other proxies; sets VLLM_PID and returns once it answers a chat completion.
start_vllm_router() {
  spawn_proxy vllm-router --host 127.0.0.1 --port "$1" --worker-urls "http://127.0.0.1:$2" \
    --policy round_robin --prometheus-port "$(free_port)" >"$3" 2>&1
  # shellcheck disable=SC2034 # read by the scripts that source this file
  VLLM_PID=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null -X POST -H 'content-type: application/json' "http://127.0.0.1:$1/v1/chat/completions" \
      -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' && return 0
    sleep 0.2
  done
}

# CPU time (user + system) of processes, in clock ticks.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# CPU time of a server and all its children, exited ones included (their time is in the
# parent's cutime/cstime once reaped): PostgreSQL's postmaster and its backends.
tree_ticks() { # pid
  local t c
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
  for c in $(pgrep -P "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
# Resident memory (VmRSS) and its peak (VmHWM) of processes, in KiB, summed.
rss_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
hwm_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $t; }
# shellcheck disable=SC2034
HZ=$(getconf CLK_TCK)

# A wrk script posting a chat completion: name stream [client key].
wrk_script() { # file stream [key]
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"mock-model","stream":$2,"messages":[{"role":"user","content":"Say hello to the benchmark"}]}'
LUA
  [ -n "${3:-}" ] && echo "wrk.headers[\"Authorization\"] = \"Bearer $3\"" >>"$1"
  return 0
}

# wrk's latency distribution in microseconds: "50%    1.23ms" -> 1230.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else {sub(/s/,"",v); print v*1000000}}'; }

# Medians over rounds: lines of KEYS key fields then numbers in; one line per key with
# the median of each number out (mawk has no sort, hence the insertion sort).
medians_by() { # keys file
  awk -v keys="$1" '{ k = $1; for (f = 2; f <= keys; f++) k = k " " $f; n[k]++; nf[k] = NF
      for (f = keys + 1; f <= NF; f++) v[k, f, n[k]] = $f }
    END { for (k in n) { line = k
      for (f = keys + 1; f <= nf[k]; f++) {
        for (i = 1; i <= n[k]; i++) a[i] = v[k, f, i]
        for (i = 2; i <= n[k]; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
        m = (n[k] % 2) ? a[(n[k] + 1) / 2] : (a[n[k] / 2] + a[n[k] / 2 + 1]) / 2
        line = line " " m }
      print line } }' "$2"
}
