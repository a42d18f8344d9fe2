#!/usr/bin/env bash
# A local 3-node broker group on 127.0.0.1:8081-8083 (data in ./rocketraft-data), until
# Ctrl-C. Restarting reuses the data.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p rocketraft-broker
bin="$CARGO_TARGET_DIR/release"
data="${ROCKETRAFT_DATA:-./rocketraft-data}"
members="1=127.0.0.1:8081,2=127.0.0.1:8082,3=127.0.0.1:8083"
mkdir -p "$data"
pids=()
stop() {
  echo "stopping broker group"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM
for id in 1 2 3; do
  "$bin/rocketraft-broker" --node-id "$id" --group playground --listen "127.0.0.1:808$id" \
    --data-dir "$data/node$id" --members "$members" >"$data/node$id.log" 2>&1 &
  pids+=("$!")
done
echo "broker group 'playground' running: nodes 127.0.0.1:8081, :8082, :8083 (logs in $data/node*.log)"
echo "try, in another terminal:"
echo "  $bin/rocketraft-group-bench --connect 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 --duration-secs 5"
echo "Ctrl-C stops the group."
wait
