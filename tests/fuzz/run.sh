#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: the agent's and the bridge's outside inputs
# (tests/fuzz: config, api, mqtt_command, firmware, bridge_batch) and the device protocol's
# (firmware/wire/fuzz: decoder, roundtrip). Part of the README's test command.
#
#   FERRY_FUZZ_SECS=30   seconds per target (default 30)
#   FERRY_FUZZ_TARGETS="api config"   only these targets
#
# Each run starts from the committed seeds (tests/fuzz/seeds/<target>/, regression inputs
# included) and a working corpus under target/fuzz/corpus/ that later runs on the same machine
# reuse. A crash fails the run; its input is saved under <crate>/artifacts/<target>/ (see
# tests/fuzz/README.md for turning it into a regression test).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
secs="${FERRY_FUZZ_SECS:-30}"
targets="${FERRY_FUZZ_TARGETS:-config api mqtt_command firmware bridge_batch decoder roundtrip}"
out="$root/target/fuzz"

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

for t in $targets; do
  case "$t" in
    decoder | roundtrip) dir=firmware/wire ;;
    *) dir=tests ;;
  esac
  corpus="$out/corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  [ -d "$dir/fuzz/seeds/$t" ] && seeds=("$root/$dir/fuzz/seeds/$t")
  echo "--> fuzz $t for ${secs}s"
  # --dev: a build of the agent with optimisations takes ~8 min on 2 cores; unoptimised it is
  # a few, and the targets still run thousands of inputs per second (docs/testing.md).
  log="$out/log/$t.log"
  mkdir -p "$out/log"
  if ! (cd "$dir" && cargo +nightly fuzz run --dev --target-dir "$out" "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=20 -print_final_stats=1) >"$log" 2>&1; then
    grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse)|NEW_FUNC' "$log" | tail -60
    echo "fuzz target $t FAILED (log $log; input saved under $dir/fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^#[0-9]+ +DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log"
done
