#!/usr/bin/env bash
# Admission and placement under a bursty load: two mock nodes of unequal speed and
# capacity (each queueing beyond its slots, like llama-server), routed by plain
# least-busy (no capacity) and by capacity + queue. Prints p50/p99/max latency,
# errors and each node's share. See router/benches/admission.rs for the knobs
# (BENCH_BURSTS, BENCH_BURST, BENCH_GAP_MS).
#
# The latencies are the mock nodes' (tens to hundreds of ms), not the router's CPU:
# a release build without LTO is enough and builds in a fraction of the time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
exec cargo bench -p llm-router --bench admission
