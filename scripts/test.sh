#!/usr/bin/env bash
# Runs every test of blox: sets up moto (scripts/setup-test-env.sh), then the whole workspace.
# Extra arguments go to the test runner, e.g. `scripts/test.sh -p blox-store`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup-test-env.sh
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests: run them first, so that nextest's summary closes the output.
  cargo test --workspace --doc "$@"
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
