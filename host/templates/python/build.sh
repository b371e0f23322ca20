#!/usr/bin/env bash
# Builds app.py into dist/{{ident}}.wasm with componentize-py (`zdr plugin build` runs this).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source venv.sh
mkdir -p dist
.venv/bin/componentize-py --wit-path wit --world projector componentize app --output dist/{{ident}}.wasm >&2
