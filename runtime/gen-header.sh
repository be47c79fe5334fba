#!/usr/bin/env bash
# Regenerates include/edgemm.h with the pinned cbindgen. `--check` fails if the committed
# header differs from what the sources generate.
set -euo pipefail
cd "$(dirname "$0")"
version=0.29.4
if ! cbindgen --version 2>/dev/null | grep -q " $version\$"; then
    echo "cbindgen $version is required: cargo install cbindgen --version =$version --locked" >&2
    exit 1
fi
if [ "${1:-}" = "--check" ]; then
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    cbindgen --config cbindgen.toml --quiet --output "$tmp"
    if ! diff -u include/edgemm.h "$tmp"; then
        echo "include/edgemm.h is out of date: run runtime/gen-header.sh" >&2
        exit 1
    fi
    echo "include/edgemm.h is up to date"
else
    mkdir -p include
    cbindgen --config cbindgen.toml --quiet --output include/edgemm.h
fi
