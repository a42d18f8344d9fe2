#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, openraft's storage suite and the
# cluster tests (real broker processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
