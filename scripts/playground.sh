#!/usr/bin/env bash
# A local playground until Ctrl-C: a nameserver on 127.0.0.1:9876 and a 3-node broker group
# on 127.0.0.1:8081-8083 (data in ./rocketraft-data; restarting reuses it). Topics are created
# on first use (8 queues), as in a RocketMQ dev setup; production leaves that off.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p rocketraft-broker -p rocketraft-nameserver -p rocketraft-client
bin="$CARGO_TARGET_DIR/release"
data="${ROCKETRAFT_DATA:-./rocketraft-data}"
members="1=127.0.0.1:8081,2=127.0.0.1:8082,3=127.0.0.1:8083"
nameserver="127.0.0.1:9876"
mkdir -p "$data"
pids=()
stop() {
  echo "stopping the playground"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM
"$bin/rocketraft-nameserver" --listen "$nameserver" --auto-create-topic-queues 8 \
  >"$data/nameserver.log" 2>&1 &
pids+=("$!")
for id in 1 2 3; do
  "$bin/rocketraft-broker" --node-id "$id" --group playground --listen "127.0.0.1:808$id" \
    --data-dir "$data/node$id" --members "$members" --nameservers "$nameserver" \
    --auto-create-topic-queues 8 >"$data/node$id.log" 2>&1 &
  pids+=("$!")
done
# Wait (bounded) for the group to elect a leader and report it, then create TopicTest.
for _ in $(seq 1 120); do
  if "$bin/rocketraft" --nameserver "$nameserver" --json cluster status 2>/dev/null \
      | grep -q '"available":true'; then
    break
  fi
  sleep 0.5
done
"$bin/rocketraft" --nameserver "$nameserver" topic create TopicTest --queues 8
echo "nameserver on $nameserver; broker group 'playground' on 127.0.0.1:8081, :8082, :8083"
echo "(logs in $data/*.log). Point the official clients at $nameserver (or any broker node)."
echo "try, in another terminal:"
echo "  $bin/rocketraft cluster status"
echo "  $bin/rocketraft send TopicTest 'hello {i}' --count 100"
echo "  $bin/rocketraft consume TopicTest --group Readers --count 100"
echo "  $bin/rocketraft-group-bench --connect 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 --duration-secs 5"
echo "Ctrl-C stops everything."
wait
