#!/usr/bin/env bash
# Builds everything and runs telemd in rootless dev mode (all state under
# target/telemd-dev) with the hello and crash-symbolizer probes loaded; also
# sends a native record every few seconds so both paths show. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --workspace --bins
(cd probes-wasm && cargo build --target wasm32-wasip2 --release -p hello -p crash-symbolizer)
dir=target/telemd-dev
mkdir -p "$dir/probes"
cp probes-wasm/target/wasm32-wasip2/release/hello.wasm "$dir/probes/hello.wasm"
cp probes-wasm/target/wasm32-wasip2/release/crash_symbolizer.wasm "$dir/probes/crash-symbolizer.wasm"
target/debug/telemd --dev "$dir" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do [ -S "$dir/telem-0" ] && break; sleep 0.1; done
n=0
while kill -0 "$pid" 2>/dev/null; do
  n=$((n + 1))
  target/debug/telem-record-gen -f "$dir/telemd.toml" -c org.example/dev/heartbeat -p "dev record $n" \
    && echo "dev.sh: sent native record $n; delivered so far: $(cat "$dir/collector/records.jsonl" 2>/dev/null | wc -l)" >&2
  sleep 5
done
