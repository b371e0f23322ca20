#!/usr/bin/env bash
# Runs the tests in test_*.py natively (`zdr plugin test` runs this). componentize-py writes
# the world's Python bindings into .bindings first; there the host's imports are stubs, which
# the tests replace with fakes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source venv.sh
rm -rf .bindings
.venv/bin/componentize-py --wit-path wit --world projector bindings .bindings >&2
PYTHONPATH=.bindings .venv/bin/python -m unittest discover --start-directory . --pattern 'test_*.py' "$@"
