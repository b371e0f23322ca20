#!/usr/bin/env bash
# Benchmark: replay throughput and memory of the release build, on SQLite or PostgreSQL.
#
#   bash scripts/bench.sh [EVENTS [BATCH]]   (default 200000 events, zdr's default batch size)
#   ZDR_BENCH_POSTGRES=postgres://USER@HOST:PORT bash scripts/bench.sh [EVENTS [BATCH]]
#
# On SQLite the database is a file in a temporary folder. With ZDR_BENCH_POSTGRES (a server URL
# without a database name) the script creates a database of its own there with psql and drops
# it at the end.
#
# Generates EVENTS balance events (50,000 accounts), imports them, then measures:
#   - deploy of balance v1 (a new projector is built from the whole history),
#   - replay start of balance v2 into a clone (the zero-downtime rebuild),
# each as wall time, events/s and peak resident memory (GNU time). Run twice with different
# EVENTS to see that memory stays flat in the length of history; BATCH sets `batch_size` (events
# per transaction). Results are printed as Markdown table rows for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
events="${1:-200000}"

bash plugins/build-all.sh >/dev/null
cargo build --release --quiet -p zdr
zdr=target/release/zdr
v1=plugins/target/wasm32-wasip2/release/balance_v1.wasm
v2=plugins/target/wasm32-wasip2/release/balance_v2.wasm
work="$(mktemp -d)"
if [[ -n "${ZDR_BENCH_POSTGRES:-}" ]]; then
    server="${ZDR_BENCH_POSTGRES%/}"
    database="zdr_bench_$$"
    psql -q "$server/postgres" -c "CREATE DATABASE $database"
    trap 'rm -rf "$work"; psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT
    export ZDR_DATABASE_URL="$server/$database"
else
    trap 'rm -rf "$work"' EXIT
    export ZDR_DATABASE_URL="sqlite://$work/bench.db"
fi
export ZDR_CACHE_DIR="$work/cache"
config="$work/zdr.toml"
touch "$config"
if [[ -n "${2:-}" ]]; then
    echo "batch_size = $2" >"$config"
fi
zdr="$zdr --config $config"

awk -v n="$events" 'BEGIN {
    accounts = 50000; if (accounts > n) accounts = n;
    for (a = 0; a < accounts; a++)
        printf "{\"aggregate_uuid\":\"acct-%d\",\"event_class\":\"AccountOpened\",\"event_properties\":{\"name\":\"n%d\"}}\n", a, a;
    srand(1);
    for (i = accounts; i < n; i++) {
        a = int(rand() * accounts);
        cls = (rand() < 0.3) ? "MoneySubtracted" : "MoneyAdded";
        printf "{\"aggregate_uuid\":\"acct-%d\",\"event_class\":\"%s\",\"event_properties\":{\"amount\":%d}}\n", a, cls, 1 + int(rand() * 100);
    }
}' >"$work/events.jsonl"

$zdr -q init
$zdr -q events import "$work/events.jsonl" >/dev/null
# Warm the compiled-component cache so compile time is not counted as replay time.
$zdr -q replay create warm --projector "balance=$v1" 2>/dev/null || true

measure() {
    local label="$1"; shift
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
    read -r secs kib <"$work/time"
    printf '| %s | %d | %.2f s | %.0f events/s | %.1f MiB |\n' "$label" "$events" "$secs" \
        "$(echo "$events / $secs" | bc -l)" "$(echo "$kib / 1024" | bc -l)"
}

echo "| step | events | wall | throughput | peak RSS |"
echo "| --- | --- | --- | --- | --- |"
measure "deploy v1 (build from history)" $zdr -q projector deploy balance "$v1"
$zdr -q replay create v2 --projector "balance=$v2" >/dev/null
measure "replay start v2 (clone)" $zdr -q replay start v2
