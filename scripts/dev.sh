#!/usr/bin/env bash
# Builds everything and runs telemd in rootless dev mode (all state under
# target/telemd-dev) with the shipped probes loaded (hello, crash-symbolizer,
# kernel-oops, pstore); replays a real kernel warning into the dev kernel
# log (target/telemd-dev/kmsg, in /dev/kmsg's format) so kernel-oops
# reports it, and sends a native record every few seconds so both paths
# show. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
# A probe file or directory its group could write is refused (SECURITY.md):
# the dev probes get a packaged tree's modes whatever the caller's umask.
umask 022
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --workspace --bins
(cd probes-wasm && cargo build --target wasm32-wasip2 --release -p hello -p crash-symbolizer -p kernel-oops -p pstore)
dir=target/telemd-dev
mkdir -p "$dir/probes"
chmod 755 "$dir/probes"
cp probes-wasm/target/wasm32-wasip2/release/hello.wasm "$dir/probes/hello.wasm"
cp probes-wasm/target/wasm32-wasip2/release/crash_symbolizer.wasm "$dir/probes/crash-symbolizer.wasm"
cp probes-wasm/target/wasm32-wasip2/release/kernel_oops.wasm "$dir/probes/kernel-oops.wasm"
cp probes-wasm/target/wasm32-wasip2/release/pstore.wasm "$dir/probes/pstore.wasm"
# A real 6.x warning (tests/fixtures/kernel-log) appended to the dev kernel
# log as /dev/kmsg records, numbered on from the last run's, so the cursor
# of an earlier run does not hide it.
start=0
[ -s "$dir/kmsg" ] && start=$(( $(tail -n 1 "$dir/kmsg" | cut -d, -f2) + 1 ))
awk -v seq="$start" 'f { printf "4,%d,%d,-;%s\n", seq, seq * 1000, $0; seq++ } /^# ---$/ { f = 1 }
     END { printf "6,%d,%d,-;dev.sh: end of the replayed warning\n", seq, seq * 1000 + 10000000 }' \
  tests/fixtures/kernel-log/02-warning-6x-task.txt >> "$dir/kmsg"
target/debug/telemd --dev "$dir" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do [ -S "$dir/telem-0" ] && break; sleep 0.1; done
n=0
while kill -0 "$pid" 2>/dev/null; do
  n=$((n + 1))
  target/debug/telem-record-gen -f "$dir/telemd.toml" -c org.example/dev/heartbeat -p "dev record $n" \
    && echo "dev.sh: sent native record $n; records delivered so far (native and probe): $(cat "$dir/collector/records.jsonl" 2>/dev/null | wc -l)" >&2
  sleep 5
done
