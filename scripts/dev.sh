#!/usr/bin/env bash
# Builds everything and runs telemd in rootless dev mode (all state under
# target/telemd-dev), sending a record every few seconds so the flow shows.
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p telemetrics-host --bins
dir=target/telemd-dev
target/debug/telemd --dev "$dir" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do [ -S "$dir/telem-0" ] && break; sleep 0.1; done
n=0
while kill -0 "$pid" 2>/dev/null; do
  n=$((n + 1))
  target/debug/telem-record-gen -f "$dir/telemd.toml" -c org.example/dev/heartbeat -p "dev record $n" \
    && echo "dev.sh: sent record $n (spool: $(ls "$dir/spool" | wc -l) files)" >&2
  sleep 5
done
