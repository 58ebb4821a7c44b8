#!/usr/bin/env bash
# Fuzzing: every property of the parsers of untrusted bytes, with many generated inputs.
#   token parsers (cargo test --lib token::): the SSE framer, usage extraction, the
#     include_usage edits, the stream tap;
#   request bodies (cargo test --test acceptance fuzz_bodies): every route that reads a
#     body, through the real router over a real socket.
# The test suite runs the same properties with few cases. Usage:
#   scripts/fuzz.sh [cases]          # default 1000000 per property
#   scripts/fuzz.sh 100000 token     # one group: token or bodies
# A failure prints the smallest input found; proptest keeps its seed in
# router/proptest-regressions/ (commit it with the fix).
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${1:-1000000}"
only="${2:-}"
export PROPTEST_CASES="$cases"
# ChaCha, proptest's default generator, unoptimized in a test build costs most of
# each case; the properties that do not choose their generator get XorShift here.
export PROPTEST_RNG_ALGORITHM=xs

run() {
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name: $cases cases per property"
  cargo test -p llm-router "$@"
  echo "== $name: $((SECONDS - start)) s"
}

if [ -z "$only" ] || [ "$only" = token ]; then
  run token --lib token::
fi
if [ -z "$only" ] || [ "$only" = bodies ]; then
  run bodies --test acceptance fuzz_bodies
fi
