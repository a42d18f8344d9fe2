#!/usr/bin/env bash
# Proves that the jepsen harness catches the bugs it exists to find. Builds the broker with
# the test-only `fault-injection` feature (rocketraft_raft_store::fault) and runs, for each
# broken behaviour, the workload and faults that should expose it; every run must FAIL
# (exit code 1). A run that passes, or is inconclusive, means the harness missed a bug.
#
#   ack-before-commit  a leader acks sends that have not committed     log, partition
#   reuse-offset       a new term's first append overwrites an offset  log, kill
#   stale-reads        reads skip the read barrier                     register, pause
#   skipped fsync      a sound broker with fsync off (log-flush async) log, pause-kill
#
# Usage: scripts/jepsen-broken.sh [OUT_DIR]; ROCKETRAFT_JEPSEN_TIME sets the seconds of
# faults per run (default 45). Needs root and /dev/fuse, like the smoke suite; elsewhere it
# says why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
  echo "jepsen-broken: SKIPPED (needs root and /dev/fuse for namespaces and lazyfs)"
  exit 0
fi
time_limit="${ROCKETRAFT_JEPSEN_TIME:-45}"
out="${1:-$(mktemp -d /tmp/jepsen-broken.XXXXXX)}"
mkdir -p "$out"
bin="$CARGO_TARGET_DIR/debug"
lock=(flock /tmp/rocketraft-build.lock)

# The broken broker gets its own name; the sound one is rebuilt right after, under the
# same lock, so that no other build or test ever picks up the broken one.
"${lock[@]}" bash -c '
  set -euo pipefail
  cargo build -p rocketraft-broker --features fault-injection --bin rocketraft-broker
  cp "$1/rocketraft-broker" "$1/rocketraft-broker-broken"
  cargo build -p rocketraft-broker --bin rocketraft-broker
  cargo build -p rocketraft-jepsen
' build "$bin"

missed=()
# expect_fail NAME BROKER_BIN WORKLOAD NEMESIS SEED [VAR=VALUE...]: the run must exit 1.
expect_fail() {
  local name=$1 broker=$2 workload=$3 nemesis=$4 seed=$5
  shift 5
  local rc=0
  env "$@" "$bin/rocketraft-jepsen" run --broker-bin "$broker" --workload "$workload" \
    --nemesis "$nemesis" --seed "$seed" --time-limit "$time_limit" --out "$out/$name" || rc=$?
  if [ "$rc" -eq 1 ]; then
    echo "jepsen-broken: $name caught (FAIL as it must)"
  else
    echo "jepsen-broken: $name MISSED: exit $rc, expected 1 (runs in $out/$name)"
    missed+=("$name")
  fi
}

expect_fail ack-before-commit "$bin/rocketraft-broker-broken" log partition 11 \
  ROCKETRAFT_FAULT=ack-before-commit
expect_fail reuse-offset "$bin/rocketraft-broker-broken" log kill 12 \
  ROCKETRAFT_FAULT=reuse-offset
expect_fail stale-reads "$bin/rocketraft-broker-broken" register pause 13 \
  ROCKETRAFT_FAULT=stale-reads
# Fsync "skipped": the raft log is flushed once an hour, so killing every node together
# with its unsynced writes (pause-kill) loses acknowledged sends.
expect_fail skipped-fsync "$bin/rocketraft-broker" log pause-kill 14 \
  ROCKETRAFT_LOG_FLUSH=async ROCKETRAFT_LOG_FLUSH_INTERVAL_MS=3600000

if [ ${#missed[@]} -gt 0 ]; then
  echo "jepsen-broken: the harness missed: ${missed[*]}"
  exit 1
fi
echo "jepsen-broken: every broken build caught (runs in $out)"
