#!/usr/bin/env bash
# Runs every test of the workspace: unit, acceptance (real router, real mock nodes),
# and the dashboard's end-to-end tests in headless Chromium.
# Installs what the tests need when it is missing and this user may install it:
# the sqlite3 CLI, Chromium + ChromeDriver (Debian) and the openai, ollama and
# anthropic Python SDKs (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing_debs=()
command -v sqlite3 >/dev/null || missing_debs+=(sqlite3)
command -v chromium >/dev/null || missing_debs+=(chromium)
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

cargo test --workspace "$@"
