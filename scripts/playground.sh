#!/usr/bin/env bash
# The local playground until Ctrl-C: `rocketraft dev` starts a nameserver on 127.0.0.1:9876
# and a 3-node broker group on 127.0.0.1:8081-8083 (data in ./rocketraft-data; restarting
# reuses it), creates TopicTest, and stops everything on Ctrl-C. Extra arguments go to
# `rocketraft dev` (see `rocketraft dev --help`: --nodes, --groups, --data-dir, ports).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p rocketraft-broker -p rocketraft-nameserver -p rocketraft-client
bin="$CARGO_TARGET_DIR/release"
echo "the command line is $bin/rocketraft (add it to PATH: export PATH=\"$bin:\$PATH\")"
exec "$bin/rocketraft" dev "$@"
