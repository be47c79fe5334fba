#!/usr/bin/env bash
# Runs the workspace tests for an ARM target under qemu-user (release profile, so the test
# build shares its dependencies with cross/build.sh).
#
#   cross/test.sh aarch64-unknown-linux-gnu [cargo test arguments, e.g. --test golden]
#
# Needs what cross/build.sh needs, plus qemu-user. Tests that start the CLI go through qemu
# too (EDGEMM_TEST_RUNNER), as binfmt_misc is not available in every container.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/test.sh TARGET [cargo test args]}
shift
case "$target" in
    aarch64-unknown-linux-gnu) export EDGEMM_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-unknown-linux-gnueabihf) export EDGEMM_TEST_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    *) echo "unsupported target $target" >&2; exit 2 ;;
esac
if [ $# -eq 0 ]; then
    set -- --workspace
fi
cargo test --config cross/config.toml --target "$target" --release "$@"
