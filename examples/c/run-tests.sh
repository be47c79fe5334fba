#!/usr/bin/env bash
# Builds edgemm's libraries, the C example and the C API tests, then checks:
#  - the example, linked statically and dynamically, prints the reference labels;
#  - the C tests pass, plain, under AddressSanitizer + UBSan, and under valgrind (no errors,
#    no definite leaks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

# The libraries, and the CLI (edgemm-cli) that packs the tiny test models.
cargo build -p edgemm -p edgemm-cli
target_dir=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
edgemm=$target_dir/debug/edgemm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The example uses the default cache directory: keep it in the work directory, so a run
# neither depends on nor writes to the user's ~/.cache/edgemm (which edgemm refuses when it
# holds files edgemm did not create).
export EDGEMM_CACHE_DIR="$work/cache-example"

# A repository of tiny models (fast under valgrind) and a corrupt artifact.
mkdir -p "$work/repo"
manifest() { # hidden width -> manifest JSON for an 8x8 alexnet-small
    cat <<JSON
{"format_version": 1, "architecture": "alexnet-small",
 "config": {"input_size": 8, "channels": [2, 2, 2], "hidden": $1},
 "labels": ["zero","one","two","three","four","five","six","seven","eight","nine"],
 "input": {"height": 8, "width": 8, "tensor_values": "unit"}}
JSON
}
manifest 4 > "$work/tiny.json"
manifest 4096 > "$work/big.json"
"$edgemm" pack --manifest "$work/tiny.json" --random-seed 1 -o "$work/repo/tiny.tar.gz" >/dev/null
"$edgemm" pack --manifest "$work/big.json" --random-seed 2 -o "$work/repo/big.tar.gz" >/dev/null
head -c 4096 /dev/urandom > "$work/repo/corrupt.tar.gz"

make -C "$here" --no-print-directory TARGETDIR="$target_dir" all

echo "--- example, static and shared"
for variant in static shared; do
    out=$("$here/classify-$variant" models/repository efficientnet-lite0.tar.gz \
        models/samples/imagenet/grace_hopper.png models/samples/imagenet/cat.png \
        models/samples/imagenet/hot_dog.jpg models/samples/imagenet/bird.png \
        models/samples/imagenet/dragonfly.png)
    echo "$out"
    for expected in "grace_hopper.png: military uniform" "cat.png: Egyptian cat" \
        "hot_dog.jpg: hotdog" "bird.png: chickadee" "dragonfly.png: dragonfly"; do
        grep -q "$expected" <<<"$out" || { echo "classify-$variant: missing '$expected'"; exit 1; }
    done
done

echo "--- example, static, sign-language model on the 100 shipped sign samples"
out=$("$here/classify-static" models/repository sign-language.tar.gz models/samples/sign-digits/*/*.JPG)
# Each line is "…/sign-digits/<digit>/<file>: <top label> <probability>, …".
read -r correct total < <(awk -F': ' '/sign-digits/ {
        n = split($1, parts, "/"); split($2, top, " ");
        total++; if (top[1] == parts[n - 1]) correct++ }
    END { print correct + 0, total + 0 }' <<<"$out")
echo "sign-language from C: $correct/$total correct"
[ "$total" -eq 100 ] && [ "$correct" -ge 99 ] \
    || { echo "sign-language from C: expected >= 99/100 correct (measured 99)"; exit 1; }

echo "--- C tests"
"$here/test-static" "$work/repo" "$work/cache-plain"
echo "--- C tests under AddressSanitizer + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$here/test-asan" "$work/repo" "$work/cache-asan"
echo "--- C tests under valgrind"
valgrind --quiet --error-exitcode=1 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    "$here/test-static" "$work/repo" "$work/cache-valgrind"
echo "C API: all checks passed"
