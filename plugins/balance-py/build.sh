#!/usr/bin/env bash
# Builds one version of the Python `balance` projector into a Wasm component with
# componentize-py.
#
# Usage, from anywhere: bash plugins/balance-py/build.sh v1|v2
# Output: plugins/target/py/balance_<version>.wasm. Other Python guests of the repository
# (tests/hostile/) reuse it: build.sh APP_DIR OUTPUT.wasm builds APP_DIR/app.py. Creates a virtual environment with the
# pinned build tools (requirements.txt) under plugins/target/py-venv when it is missing, and
# does nothing when the output is newer than every input.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="${1:-}"
# Version 2 declares `partition-by` (its rows are keyed by account), so it targets the world
# that exports it; the other guests built here target the plain `projector` world.
world=projector
if [[ $# == 1 && ( "$version" == v1 || "$version" == v2 ) ]]; then
    app="$here/$version"
    output="$root/plugins/target/py/balance_$version.wasm"
    if [[ "$version" == v2 ]]; then
        world=partitioned-projector
    fi
elif [[ $# == 2 ]]; then
    app="$(cd "$1" && pwd)"
    output="$(cd "$(dirname "$2")" 2>/dev/null && pwd || { mkdir -p "$(dirname "$2")" && cd "$(dirname "$2")" && pwd; })/$(basename "$2")"
else
    echo "usage: build.sh v1|v2, or build.sh APP_DIR OUTPUT.wasm" >&2
    exit 2
fi

venv="$root/plugins/target/py-venv"
stamp="$venv/.requirements"

if [[ ! -x "$venv/bin/componentize-py" ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "balance-py: installing the pinned build tools into ${venv#"$root"/}" >&2
    python3 -m venv "$venv" || { echo "balance-py: error: python3 -m venv failed; install Python 3 with venv" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" ||
        { echo "balance-py: error: pip install failed; check that PyPI is reachable" >&2; exit 1; }
    cp "$here/requirements.txt" "$stamp"
fi

inputs=("$app/app.py" "$here/common/balance_common.py" "$here/build.sh" "$stamp" "$root/wit/projector.wit")
if [[ -f "$output" ]]; then
    fresh=1
    for input in "${inputs[@]}"; do
        [[ "$input" -nt "$output" ]] && fresh=0
    done
    if [[ $fresh == 1 ]]; then
        echo "balance-py: ${output#"$root"/} is up to date" >&2
        exit 0
    fi
fi

mkdir -p "$(dirname "$output")"
"$venv/bin/componentize-py" --wit-path "$root/wit" --world "$world" componentize \
    --python-path "$app" --python-path "$here/common" app --output "$output" >&2
echo "balance-py: built ${output#"$root"/}" >&2
