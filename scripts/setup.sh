#!/usr/bin/env bash
# Installs what building and testing rocketraft needs beyond a Rust toolchain:
# - clang and libclang, for RocksDB's bindgen and C++ build; make, for jemalloc's (the
#   broker's allocator);
# - a virtualenv with the official RocketMQ 5 Python client, for the interop tests;
# - iproute2 and nftables, for the jepsen harness's network namespaces and partitions,
#   fonts-dejavu-core, the font of its plots, libfaketime (package faketime), for its clock
#   faults, and fuse3 (fusermount3, to clean up a lazyfs mount by hand).
# Safe to run again; installs only what is missing.
set -euo pipefail

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    "${sudo_cmd[@]}" apt-get update -qq
    apt_updated=1
  fi
  echo "setup: installing $*"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "$@"
}

need=()
for pkg in clang libclang-dev make python3 python3-venv iproute2 nftables fonts-dejavu-core \
  faketime fuse3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

venv="${ROCKETRAFT_VENV:-$HOME/.cache/rocketraft-venv}"
if ! "$venv/bin/python" -c "import rocketmq" >/dev/null 2>&1; then
  echo "setup: installing rocketmq-python-client 5.1.2 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "rocketmq-python-client==5.1.2"
fi
