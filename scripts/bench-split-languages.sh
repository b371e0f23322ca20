#!/usr/bin/env bash
# Whole against split replays of the JavaScript and Python `balance` v2 on PostgreSQL:
# `zdr replay start` of each guest with `--partitions 1` then `--partitions 2`, alternating,
# ROUNDS times, on one database of the script's own; prints each wall time and, per guest,
# the min and median of each.
#
#   ZDR_BENCH_POSTGRES=postgres://USER@HOST:PORT bash scripts/bench-split-languages.sh [EVENTS [ROUNDS]]
#
# EVENTS (default 20000) deposits over 200 accounts. Uses target/release/zdr (built if missing)
# and the components of plugins/build-all.sh. The times include starting the process and
# loading the compiled component from the cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events="${1:-20000}"
rounds="${2:-3}"
server="${ZDR_BENCH_POSTGRES:?set ZDR_BENCH_POSTGRES to a PostgreSQL server URL without a database}"
server="${server%/}"

zdr=target/release/zdr
[[ -x "$zdr" ]] || cargo build --release --quiet -p zdr
bash plugins/build-all.sh >/dev/null
v1=plugins/target/wasm32-wasip2/release/balance_v1.wasm

work="$(mktemp -d)"
database="zdr_bench_split_$$"
psql -q "$server/postgres" -c "CREATE DATABASE $database"
cleanup() {
    psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $database" || true
    rm -rf "$work"
}
trap cleanup EXIT
export ZDR_DATABASE_URL="$server/$database"

python3 - "$events" >"$work/events.jsonl" <<'PY'
import json, random, sys
random.seed(2)
for i in range(200):
    print(json.dumps({"aggregate_uuid": f"acct-{i:05}", "event_class": "AccountOpened",
                      "event_properties": {"name": f"Holder {i}"}}))
for _ in range(int(sys.argv[1])):
    print(json.dumps({"aggregate_uuid": f"acct-{random.randrange(200):05}",
                      "event_class": "MoneyAdded", "event_properties": {"amount": random.randrange(100)}}))
PY
"$zdr" -q init >/dev/null
"$zdr" -q events import "$work/events.jsonl" >/dev/null
"$zdr" -q projector deploy balance "$v1" >/dev/null

n=0
for guest in js py; do
    for round in $(seq "$rounds"); do
        for parts in 1 2; do
            n=$((n + 1))
            key="r${n}"
            "$zdr" -q replay create "$key" --projector "balance=plugins/target/$guest/balance_v2.wasm" >/dev/null
            started=$(date +%s.%N)
            "$zdr" -q replay start "$key" --partitions "$parts" >/dev/null
            ended=$(date +%s.%N)
            seconds=$(python3 -c "print(f'{$ended - $started:.2f}')")
            echo "$guest $parts $seconds" | tee -a "$work/times"
            "$zdr" -q replay remove "$key" >/dev/null
        done
    done
done

python3 - "$work/times" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    guest, parts, seconds = line.split()
    times.setdefault((guest, parts), []).append(float(seconds))
for (guest, parts), values in sorted(times.items()):
    print(f"{guest}, {parts} part(s): min {min(values):.2f} s, median {statistics.median(values):.2f} s ({len(values)} runs)")
PY
