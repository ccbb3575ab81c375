#!/usr/bin/env bash
# Memory over time under plain ingest: the release `ferry` fed by `ferry-sim` at 1,000 samples/s
# (10 devices x 4 sensors x 25 Hz, TCP), no API requests, RSS sampled once a minute.
#
#   agent/benches/rss.sh                      # one hour (builds the release binaries first)
#   FERRY_RSS_MINUTES=10 agent/benches/rss.sh # shorter
#   FERRY_RSS_BIN=/path/to/dir agent/benches/rss.sh   # use ferry and ferry-sim from there, no build
#
# Prints one row per minute and writes the same as CSV to $FERRY_RSS_OUT (default
# target/bench-data/rss-<date>.csv). Columns: minute, VmRSS, its anonymous / file-backed / shared
# parts (smaps_rollup; the shared part is SQLite's WAL index, file-backed is the mapped binary),
# VmHWM (peak), threads, database and WAL file sizes, samples the simulator saw acked.
set -euo pipefail

minutes=${FERRY_RSS_MINUTES:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [[ -n "${FERRY_RSS_BIN:-}" ]]; then
    bin=$FERRY_RSS_BIN
else
    (cd "$root" && cargo build --release -p ferry-agent -p ferry-sim --bins)
    bin=$root/target/release
fi
out=${FERRY_RSS_OUT:-$root/target/bench-data/rss-$(date -u +%Y%m%dT%H%M%SZ).csv}
mkdir -p "$(dirname "$out")"

work=$(mktemp -d /tmp/ferry-rss.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dev_port=$(free_port)
api_port=$(free_port)
cat >"$work/ferry.toml" <<EOF
[gateway]
id = "rss-bench"
[store]
path = "$work/ferry.db"
[devices]
tcp_listen = "127.0.0.1:$dev_port"
[api]
listen = "127.0.0.1:$api_port"
EOF

"$bin/ferry" --log warn run --config "$work/ferry.toml" >"$work/ferry.log" 2>&1 &
ferry_pid=$!
sim_pid=
cleanup() {
    [[ -n "$sim_pid" ]] && kill "$sim_pid" 2>/dev/null || true
    kill "$ferry_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$dev_port") 2>/dev/null && break
    sleep 0.1
done

# Generation runs a little past the last sample; the report comes at the end.
"$bin/ferry-sim" --devices 10 --sensors 4 --rate 25 --tcp "127.0.0.1:$dev_port" \
    --duration $((minutes * 60 + 30)) --json >"$work/sim.json" 2>"$work/sim.log" &
sim_pid=$!

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "$2"; }
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
echo "minute,rss_kib,anon_kib,file_kib,shmem_kib,hwm_kib,threads,db_bytes,wal_bytes" >"$out"
printf '%6s %9s %9s %9s %9s %9s %7s %12s %11s\n' minute rss_kib anon_kib file_kib shmem_kib hwm_kib threads db_bytes wal_bytes
start=$(date +%s)
for m in $(seq 0 "$minutes"); do
    # Sample at whole minutes from the start, whatever the sampling itself took.
    while (($(date +%s) < start + m * 60)); do sleep 1; done
    status=/proc/$ferry_pid/status
    [[ -r $status ]] || { echo "ferry exited; see $work/ferry.log" >&2; cat "$work/ferry.log" >&2; exit 1; }
    row=(
        "$m"
        "$(kib VmRSS "$status")"
        "$(kib Anonymous "/proc/$ferry_pid/smaps_rollup")"
        "$(kib RssFile "$status")"
        "$(kib RssShmem "$status")"
        "$(kib VmHWM "$status")"
        "$(kib Threads "$status")"
        "$(size "$work/ferry.db")"
        "$(size "$work/ferry.db-wal")"
    )
    (IFS=,; echo "${row[*]}") >>"$out"
    printf '%6s %9s %9s %9s %9s %9s %7s %12s %11s\n' "${row[@]}"
done
wait "$sim_pid" || true
sim_pid=
cp "$work/sim.json" "${out%.csv}-sim.json" 2>/dev/null || true
python3 - "$work/sim.json" <<'PY' || tail -3 "$work/sim.log"
import json, sys
t = json.load(open(sys.argv[1]))["report"]["totals"]
print(f"simulator: {t['generated']} samples generated, {t['acked']} acked, {t['dropped']} dropped by devices")
PY
echo "csv: $out"
