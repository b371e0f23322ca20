#!/usr/bin/env bash
# Builds app.py into dist/{{ident}}.wasm with componentize-py (`zdr plugin build` runs this).
# The pinned build tools go into a virtual environment, .venv, on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ ! -x .venv/bin/componentize-py ]]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt ||
        { echo "error: pip could not install componentize-py; check that PyPI is reachable" >&2; exit 1; }
fi
mkdir -p dist
.venv/bin/componentize-py --wit-path wit --world projector componentize app --output dist/{{ident}}.wasm >&2
