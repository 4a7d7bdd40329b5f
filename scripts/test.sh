#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs test components, then format, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
