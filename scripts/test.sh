#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run). Installs what the tests
# need, then: format check, clippy with warnings as errors (host and probe
# workspaces), the probe components, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Files the tests create get the modes a packaged tree has: a probe file or
# directory its group could write is refused (SECURITY.md).
umask 022
# i686: the crash-symbolizer's parsers also run on a 32-bit target natively,
# where a size computation that wraps on wasm32 (32-bit usize) shows.
rustup target add wasm32-wasip2 i686-unknown-linux-gnu
# systemd-analyze verifies the installed units (tests/install.rs).
command -v systemd-analyze >/dev/null || { apt-get update && apt-get install -y systemd; }
# gcc, g++ and gdb make real core files for the crash tests; eu-stack
# (elfutils) is what the crash-symbolizer's backtraces are compared with.
{ command -v gdb >/dev/null && command -v gcc >/dev/null && command -v g++ >/dev/null && command -v eu-stack >/dev/null; } ||
  { apt-get update && apt-get install -y gdb gcc g++ elfutils binutils; }
# libc's debug file, so libc frames carry file:line and the tests compare
# those with eu-stack's too.
dpkg -s libc6-dbg >/dev/null 2>&1 || { apt-get update && apt-get install -y libc6-dbg; }
# python3 and setpriv (util-linux) open connections as another uid in the
# socket fairness tests.
{ command -v python3 >/dev/null && command -v setpriv >/dev/null; } ||
  { apt-get update && apt-get install -y python3 util-linux; }
# Debian's debuginfod server serves a stripped program's debug file to
# telemd in tests/debuginfod.rs; objcopy and strip (binutils) split it off.
{ command -v debuginfod >/dev/null && command -v objcopy >/dev/null; } ||
  { apt-get update && apt-get install -y debuginfod binutils; }
# systemd-journal-remote turns the journal tests' export-format entries
# into real journal files (tests/journal.rs).
[ -x /lib/systemd/systemd-journal-remote ] || { apt-get update && apt-get install -y systemd-journal-remote; }
# pkg-config gives the C test programs their flags for the installed
# libtelemetry; valgrind watches the library under random calls; minisign
# signs probes as their authors do (tests/provenance.rs).
{ command -v pkg-config >/dev/null && command -v valgrind >/dev/null && command -v minisign >/dev/null; } ||
  { apt-get update && apt-get install -y pkg-config valgrind minisign; }
# promtool (Debian's prometheus package) checks the metrics exposition
# (tests/metrics.rs).
command -v promtool >/dev/null || { apt-get update && apt-get install -y --no-install-recommends prometheus; }
# dpkg-deb, dpkg-shlibdeps (dpkg-dev), file and lintian build and check
# the Debian packages (tests/deb.rs).
{ command -v dpkg-shlibdeps >/dev/null && command -v file >/dev/null && command -v lintian >/dev/null; } ||
  { apt-get update && apt-get install -y --no-install-recommends dpkg-dev file lintian; }
# openssl makes the certificates of the mutual TLS tests (tests/tls.rs).
command -v openssl >/dev/null || { apt-get update && apt-get install -y openssl; }
# gcc-multilib links the i686 test binaries.
dpkg -s gcc-multilib >/dev/null 2>&1 || { apt-get update && apt-get install -y gcc-multilib; }
cargo fmt --all -- --check
(cd probe-sdk && cargo fmt -- --check)
(cd probes-wasm && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd probes-wasm && cargo clippy --target wasm32-wasip2 --release -- -D warnings)
(cd probes-wasm && cargo clippy -p crash-symbolizer -p crash-signature -p kernel-report -p pstore -p journal-errors --all-targets -- -D warnings)
(cd probes-wasm && cargo build --target wasm32-wasip2 --release)
# The Python probe template, built with componentize-py (pinned, from PyPI,
# in a virtual environment under target/) against wit/probe.wit.
./scripts/build-python-probe.sh
# Python's opentelemetry-proto (PyPI, pinned) decodes telemd's OTLP
# requests in tests/otlp.rs: the wire format checked by code we did not write.
OTLP_PROTO_VERSION=1.45.2
target/pyenv-otlp/bin/pip show opentelemetry-proto 2>/dev/null | grep -qx "Version: $OTLP_PROTO_VERSION" ||
  { python3 -m venv target/pyenv-otlp &&
    target/pyenv-otlp/bin/pip install --quiet "opentelemetry-proto==$OTLP_PROTO_VERSION"; }
# The programs that link the core crate alone stay small: the crash handler
# runs as root for every crash (tests/dependency_tree.rs checks what they
# link; this checks what that weighs).
cargo build --release -p telem-crash-handler -p telem-record-gen -p libtelemetry
for b in telem-crash-handler telem-record-gen; do
  size=$(stat -c %s "target/release/$b")
  [ "$size" -lt 3000000 ] || { echo "target/release/$b is $size bytes, over 3 MB" >&2; exit 1; }
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The end-to-end tests (tests/) start the programs of the other packages
# and link C programs against libtelemetry.so; Cargo builds those only for
# their own package's tests, so build them all.
cargo build --workspace --bins --lib
# Tests that need root are #[ignore]d with the reason; as root they run,
# otherwise the closing line counts them as ignored.
as_root=()
[ "$(id -u)" = 0 ] && as_root=(-- --include-ignored)
# Every test run goes on when one fails, so the closing line counts them all;
# the script then fails.
status=0
cargo test --workspace --no-fail-fast "${as_root[@]}" 2>&1 | tee "$log" || status=1
(cd probes-wasm && cargo test -p crash-symbolizer --lib --tests) 2>&1 | tee -a "$log" || status=1
# The kernel report parser and the pstore probe's logic, natively: every
# real report in tests/fixtures/kernel-log against its expected records.
(cd probes-wasm && cargo test -p crash-signature -p kernel-report -p pstore -p journal-errors) 2>&1 | tee -a "$log" || status=1
(cd probes-wasm && cargo test -p crash-symbolizer --lib --target i686-unknown-linux-gnu) 2>&1 | tee -a "$log" || status=1
# One closing line with the totals of every test binary above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1); if ($(i) ~ /^ignored/) g += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d ignored (not run: see their #[ignore] reason)\n", p, f, g }' "$log"
exit "$status"
