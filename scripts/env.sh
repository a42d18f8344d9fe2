# Sourced by the scripts: keep build output outside the clone so repeated runs (and fresh
# clones on the same machine) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rocketraft-target}"
