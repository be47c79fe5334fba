#!/usr/bin/env bash
# Builds edgemm for an ARM board: the static and shared libraries and the stripped CLI.
#
#   cross/build.sh aarch64-unknown-linux-gnu      (or armv7-unknown-linux-gnueabihf)
#
# Output in target/TARGET/release/: libedgemm.a, libedgemm.so, edgemm (and edgemm.stripped).
# Needs: rustup target add TARGET; Debian's gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/build.sh TARGET}
case "$target" in
    aarch64-unknown-linux-gnu) strip=aarch64-linux-gnu-strip ;;
    armv7-unknown-linux-gnueabihf) strip=arm-linux-gnueabihf-strip ;;
    *) echo "unsupported target $target" >&2; exit 2 ;;
esac
# The libraries (edgemm) and the CLI (edgemm-cli). After a `cross/test.sh` run whose selection
# resolves the same features (cross/README.md#in-ci) this compiles at most the CLI crate: the
# dependencies and the libraries are shared with the tests' build (CI relies on that).
cargo build --config cross/config.toml --target "$target" --release -p edgemm -p edgemm-cli
out=${CARGO_TARGET_DIR:-target}/$target/release
"$strip" -o "$out/edgemm.stripped" "$out/edgemm"
printf '%s\n' "sizes for $target:"
for f in edgemm.stripped libedgemm.a libedgemm.so; do
    printf '  %-16s %8.1f MiB\n' "$f" "$(stat -c %s "$out/$f" | awk '{print $1 / 1048576}')"
done
