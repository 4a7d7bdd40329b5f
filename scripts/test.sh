#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs test components, then format, lint, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-env.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The event mesh's language clients: codec tests on the shared envelope vectors (their end-to-end
# tests against a real node run inside the Rust suite above).
(cd clients/python && ../../.tools/venv/bin/python -m unittest discover -s tests)
(cd clients/node && node --test test/)
