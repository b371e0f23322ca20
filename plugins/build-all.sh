#!/usr/bin/env bash
# Builds every guest component of the repository: the bundled Rust projectors (plugins/), the
# test-only guests (tests/guests/) and the hostile ones (tests/hostile/), each its own cargo
# workspace, in release mode for wasm32-wasip2; then the JavaScript and Python projectors
# (plugins/balance-js, plugins/balance-py, and the JS/Python guests of tests/hostile/), whose
# build scripts install their pinned npm and PyPI packages locally under the repository on
# first use. Prints the path of each .wasm produced and checks that it is a component.
#
# Usage: plugins/build-all.sh [--demo] [extra `cargo build` arguments, e.g. --locked or --offline]
# With --demo, only the Rust projectors in plugins/ are built: what `zdr demo` needs.
# Works from any directory. The three workspaces build into one target folder, plugins/target
# (forced with --target-dir, whatever CARGO_TARGET_DIR says), so that the dependencies they
# share (wit-bindgen and its macros) are compiled once; each workspace's components are then
# copied to its own target/wasm32-wasip2/release/, which is where the zdr-plugin.toml
# manifests and the end-to-end tests look.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="wasm32-wasip2"
workspaces=("$root/plugins" "$root/tests/guests" "$root/tests/hostile")
demo_only=false
if [[ "${1:-}" == "--demo" ]]; then
    demo_only=true
    workspaces=("$root/plugins")
    shift
fi

die() {
    echo "build-all: error: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo is not on PATH; install Rust from https://rustup.rs"
sysroot="$(cd "$root" && rustc --print sysroot)" || die "rustc --print sysroot failed"
if [[ ! -d "$sysroot/lib/rustlib/$target/lib" ]]; then
    if command -v rustup >/dev/null; then
        echo "build-all: installing the Rust target $target (rustup target add $target)" >&2
        (cd "$root" && rustup target add "$target") >&2 ||
            die "rustup target add $target failed; the guests cannot be built without it"
    fi
    [[ -d "$sysroot/lib/rustlib/$target/lib" ]] ||
        die "the Rust target $target is not installed for $(cd "$root" && rustc --version); run: rustup target add $target"
fi

# The first 8 bytes of a component: the wasm magic, then layer 1 / version 0x0d. A core module
# has 01 00 00 00 after the magic.
component_header="0061736d0d000100"

built=()
shared_target="$root/plugins/target"
for workspace in "${workspaces[@]}"; do
    echo "build-all: building ${workspace#"$root"/} for $target" >&2
    # JSON messages on stdout name every artifact; diagnostics still render on stderr.
    messages="$(cargo build --release --target "$target" \
        --manifest-path "$workspace/Cargo.toml" --target-dir "$shared_target" \
        --message-format=json-render-diagnostics "$@")" ||
        die "cargo build failed in ${workspace#"$root"/} (see the errors above)"
    out="$workspace/target/$target/release"
    mkdir -p "$out"
    while IFS= read -r wasm; do
        [[ -n "$wasm" ]] || continue
        # The crate names of the three workspaces differ, so no component overwrites
        # another's in the shared folder; plugins/ needs no copy.
        dest="$out/$(basename "$wasm")"
        # An unchanged component is not written again (a test may be reading it).
        if ! [[ "$wasm" -ef "$dest" ]] && ! cmp -s "$wasm" "$dest"; then
            cp "$wasm" "$dest" || die "cannot copy $wasm to $out"
        fi
        built+=("$dest")
    done < <(grep -o '"[^"]*\.wasm"' <<<"$messages" | tr -d '"' | sort -u)
done

if $demo_only; then
    for wasm in "${built[@]}"; do
        echo "$wasm"
    done
    exit 0
fi

# JavaScript (componentize-js) and Python (componentize-py) guests. Each script skips the
# build when its output is newer than its inputs, so a second run takes a moment.
command -v node >/dev/null || die "node is not on PATH; the JavaScript projectors need Node.js 18 or newer"
command -v python3 >/dev/null || die "python3 is not on PATH; the Python projectors need Python 3.10 or newer"
for version in v1 v2; do
    node "$root/plugins/balance-js/build.mjs" "$version" ||
        die "building the JavaScript balance projector $version failed (see above)"
    built+=("$root/plugins/target/js/balance_$version.wasm")
    bash "$root/plugins/balance-py/build.sh" "$version" ||
        die "building the Python balance projector $version failed (see above)"
    built+=("$root/plugins/target/py/balance_$version.wasm")
done
node "$root/plugins/balance-js/build.mjs" "$root/tests/hostile/js-loop/projector.js" \
    "$root/tests/hostile/target/js/js_loop.wasm" || die "building tests/hostile/js-loop failed (see above)"
built+=("$root/tests/hostile/target/js/js_loop.wasm")
bash "$root/plugins/balance-py/build.sh" "$root/tests/hostile/py-alloc" \
    "$root/tests/hostile/target/py/py_alloc.wasm" || die "building tests/hostile/py-alloc failed (see above)"
built+=("$root/tests/hostile/target/py/py_alloc.wasm")

[[ ${#built[@]} -gt 0 ]] || die "no .wasm file was produced"
for wasm in "${built[@]}"; do
    [[ -f "$wasm" ]] || die "cargo reported $wasm but it does not exist"
    header="$(head -c 8 "$wasm" | od -An -tx1 | tr -d ' \n')"
    [[ "$header" == "$component_header" ]] ||
        die "$wasm is not a Wasm component (header $header, want $component_header)"
    echo "$wasm"
done
