#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, openraft's storage suite, the
# cluster tests (real broker processes on loopback), the jepsen smoke suite and its check
# against deliberately broken builds; in CI also the short side-by-side
# benchmark against NATS JetStream and RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The benchmark driver (rocketraft-bench) is behind the client's `peers` feature.
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace
cargo test -p rocketraft-client --features peers --bin rocketraft-bench
# The jepsen harness must catch deliberately broken builds (docs/jepsen.md, "Broken builds").
./scripts/jepsen-broken.sh

# CI: rocketraft, NATS JetStream and RabbitMQ side by side, one cell each (ratios printed,
# no threshold; docs/benchmarks.md). It installs the peers and builds release binaries.
if [ "${CI:-}" = true ]; then
  ./scripts/bench-peers.sh --ci
fi
