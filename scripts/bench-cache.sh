#!/usr/bin/env bash
# Cold compile vs warm load of every bundled projector component through zdr's compiled-
# component cache: `zdr plugin bench-cache` compiles each component into an empty cache, then
# loads it back with fresh runtimes (as a new zdr process would) and reports the median.
#
# Usage: bash scripts/bench-cache.sh [path/to/zdr]   (default: target/release/zdr, built if missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

zdr="${1:-target/release/zdr}"
if [[ ! -x "$zdr" ]]; then
    cargo build --release -p zdr
fi
bash plugins/build-all.sh >/dev/null
"$zdr" plugin bench-cache --warm-runs 7 \
    plugins/target/wasm32-wasip2/release/balance_v2.wasm \
    plugins/target/js/balance_v2.wasm \
    plugins/target/py/balance_v2.wasm
