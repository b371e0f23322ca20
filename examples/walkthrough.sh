#!/usr/bin/env bash
# The zero-downtime replay lifecycle, step by step with the zdr CLI, on a fresh SQLite file.
# Run from the repository root: bash examples/walkthrough.sh
# (`zdr demo` tells the same story in one command, with traffic flowing throughout.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash plugins/build-all.sh >/dev/null
cargo build --quiet -p zdr
zdr() { target/debug/zdr --database-url "sqlite://$work/zdr.db" "$@"; }
v1=plugins/target/wasm32-wasip2/release/balance_v1.wasm
v2=plugins/target/wasm32-wasip2/release/balance_v2.wasm
work="$(mktemp -d)"
trap 'kill "$serve" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "## an event store, and balance v1 built from it"
zdr init
zdr events import examples/events.jsonl
zdr projector deploy balance "$v1"
zdr projector list

echo "## the daemon serves v1 live"
# Started directly (not through the zdr function) so that $! is the daemon itself.
target/debug/zdr --database-url "sqlite://$work/zdr.db" serve --poll-interval-ms 50 2>"$work/serve.log" &
serve=$!
zdr events append --class MoneyAdded --aggregate acct-001 --properties '{"amount": 10}'

echo "## rebuild as v2 beside the live tables"
zdr replay create v2 --projector "balance=$v2"
zdr replay start v2
zdr events append --class MoneyAdded --aggregate acct-002 --properties '{"amount": 5}'
zdr replay lag v2
zdr replay start v2          # catch up
zdr replay project v2        # from now on new events go to live and clone
zdr events append --class MoneySubtracted --aggregate acct-003 --properties '{"amount": 1}'
zdr replay show v2
zdr replay promote v2        # atomic swap; the daemon hot-swaps to v2
sleep 1
zdr projector list
zdr replay remove v2
zdr replay list

kill -TERM "$serve"; wait "$serve" || true
grep -E "hot swap|serving version" "$work/serve.log" || true
