#!/usr/bin/env bash
# The soak (not in CI): 30 minutes of device reboots, line noise, link drops, broker restarts,
# disk-full episodes and API load at once, then the exactly-once count (tests/examples/soak.rs).
#
#   tests/soak.sh                 # 30 minutes
#   tests/soak.sh --minutes 2     # a short try
#
# Needs root (the store gets a tmpfs of its own), mosquitto, PostgreSQL and python3: the README's
# test command installs them. Release binaries; the figures of the last run are in
# docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
# One package per build, as the harness builds them (together, cargo would unify their features
# and the harness would build both again).
cargo build --locked --release -q -p ferry-agent --bin ferry
cargo build --locked --release -q -p ferry-cloud-bridge --bin ferry-bridge
cargo run --locked --release -q -p ferry-tests --example soak -- "$@"
