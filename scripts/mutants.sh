#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules whose rules the tests must
# pin down: record validation, the wire frame and spool file format, the
# grant rules (core); the real syncs (durability); the `CFG:` config rules
# (cfg); the crash handler's filters; the spool, backoff, rate limit and
# post outcome classification (telemd). Each mutant is built and
# the package's own tests run against it; results, per module, go to
# target/mutants/<part>/ (outcomes.json, caught.txt, missed.txt, ...).
# docs/mutants.md explains every mutant that survives.
#
# Not part of the test command: every mutant is a rebuild (see
# docs/mutants.md for how long each part takes here).
#
# Usage: scripts/mutants.sh [core|durability|cfg|handler|telemd|all]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

run() {
  local part=$1
  mkdir -p "target/mutants/$part"
  shift
  # Exit status 2 (missed mutants) and 3 (timeouts) are results, reported
  # below; anything else (the unmutated tree fails) stops here.
  local status=0
  cargo mutants --no-shuffle --output "target/mutants/$part" "$@" || status=$?
  [ "$status" -eq 0 ] || [ "$status" -eq 2 ] || [ "$status" -eq 3 ] || exit "$status"
}

part=${1:-all}
case "$part" in
  core | durability | cfg | handler | telemd | all) ;;
  *)
    echo "usage: $0 [core|durability|cfg|handler|telemd|all]" >&2
    exit 64
    ;;
esac
if [ "$part" = core ] || [ "$part" = all ]; then
  run core -p telem-core \
    -f host/core/src/record/mod.rs -f host/core/src/record/wire.rs \
    -f host/core/src/record/spool_file.rs -f host/core/src/grants.rs
fi
if [ "$part" = durability ] || [ "$part" = all ]; then
  run durability -p telem-core -f host/core/src/fsutil.rs
fi
if { [ "$part" = cfg ] || [ "$part" = all ]; } && [ "$(id -u)" -ne 0 ]; then
  echo "cfg: skipped (its rules are tested on root-owned files: run as root)" >&2
elif [ "$part" = cfg ] || [ "$part" = all ]; then
  # In place: a copied tree of telemd rebuilds wasmtime first (10 min).
  # The rules' tests are the module's own: only the library's tests run
  # (building the integration tests too would double each mutant's time),
  # the root-only ones included (run this as root).
  run cfg --in-place -p telemd -f host/telemd/src/delivery/client_config.rs -- --lib -- --include-ignored
fi
if [ "$part" = handler ] || [ "$part" = all ]; then
  run handler -p telem-crash-handler -f host/crash-handler/src/privacy.rs \
    -f host/crash-handler/src/identify.rs -f host/crash-handler/src/admission.rs \
    --re 'privacy_filter|Filter::|exe_from_pattern|credentials_changed|pidfd_pid|suid_dump|forget_oldest|recent_key'
fi
if [ "$part" = telemd ] || [ "$part" = all ]; then
  run telemd -p telemd \
    -f host/telemd/src/spool.rs -f host/telemd/src/delivery/backoff.rs \
    -f host/telemd/src/delivery/ratelimit.rs -f host/telemd/src/delivery/post.rs
fi
for d in target/mutants/*/mutants.out; do
  [ -d "$d" ] || continue
  name=$(basename "$(dirname "$d")")
  [ "$part" = all ] || [ "$part" = "$name" ] || continue
  printf '%s: caught %s, missed %s, unviable %s, timeout %s\n' "$name" \
    "$(wc -l < "$d/caught.txt")" "$(wc -l < "$d/missed.txt")" \
    "$(wc -l < "$d/unviable.txt")" "$(wc -l < "$d/timeout.txt")"
done
