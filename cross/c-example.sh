#!/usr/bin/env bash
# Links examples/c/classify.c statically against the target's libedgemm.a (from
# cross/build.sh), runs it under qemu on the shipped photos, and checks it prints the same
# top-1 labels as on the build machine.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: cross/c-example.sh TARGET}
case "$target" in
    aarch64-unknown-linux-gnu) cc=aarch64-linux-gnu-gcc; qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
    armv7-unknown-linux-gnueabihf) cc=arm-linux-gnueabihf-gcc; qemu=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    *) echo "unsupported target $target" >&2; exit 2 ;;
esac
out=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/$target/release
"$cc" -std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -Iruntime/include examples/c/classify.c \
    "$out/libedgemm.a" -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o "$out/classify-static"
photos=(grace_hopper.png cat.png hot_dog.jpg bird.png dragonfly.png)
expected=("military uniform" "Egyptian cat" "hotdog" "chickadee" "dragonfly")
result=$(cd models/samples/imagenet && "${qemu[@]}" "$out/classify-static" \
    ../../repository efficientnet-lite0.tar.gz "${photos[@]}")
echo "$result"
for i in "${!photos[@]}"; do
    grep -q "^${photos[$i]}: ${expected[$i]}" <<<"$result" \
        || { echo "$target: ${photos[$i]} is not '${expected[$i]}'" >&2; exit 1; }
done
echo "$target: C example prints the reference top-1 for all five photos"
