#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run). Installs what the tests
# need, then: format check, clippy with warnings as errors, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
