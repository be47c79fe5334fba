#!/usr/bin/env bash
# edgemm against ONNX Runtime on identical weights, in one invocation (issue #8):
# batch 1 and 8, warm, median of RUNS, same thread count; prints latency ratios.
#
#   bash runtime/benches/vs-onnxruntime.sh [--runs 20] [--threads N] [--models a,b]
#
# Installs onnx and onnxruntime from PyPI into target/ort-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=20 threads=$(nproc) models=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
venv=target/ort-venv
if ! "$venv/bin/python" -c "import onnx, onnxruntime" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check numpy onnx onnxruntime
fi
work=$(pwd)/target/bench-ort
rm -rf "$work" && mkdir -p "$work"
export RAYON_NUM_THREADS=$threads
extra=()
[ -n "$models" ] && extra=(--models "$models")
cargo bench --quiet -p edgemm --bench models -- --work "$work" --runs "$runs" "${extra[@]}" \
    | tee "$work/edgemm.jsonl"
"$venv/bin/python" models/reference/bench_ort.py --work "$work" --threads "$threads" \
    --runs "$runs" | tee "$work/ort.jsonl"
"$venv/bin/python" - "$work" "$threads" <<'PY'
import json, sys
work, threads = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for f in ("edgemm.jsonl", "ort.jsonl") for l in open(f"{work}/{f}")]
t = {(r["runtime"], r["model"], r.get("batch")): r for r in rows}
print(f"\nedgemm vs ONNX Runtime, {threads} threads, medians (ratio = edgemm / ORT; < 1 is faster)")
print(f"{'model':<20} {'batch':>5} {'edgemm ms':>10} {'ORT ms':>10} {'ratio':>7}   graph check")
for (rt, model, batch), r in sorted(t.items()):
    if rt != "edgemm":
        continue
    o = t.get(("onnxruntime", model, batch))
    c = t.get(("check", model, None))
    check = f"max rel err {c['max_relative_error']:.1e}" if c else "-"
    if o:
        print(f"{model:<20} {batch:>5} {r['median_ms']:>10.2f} {o['median_ms']:>10.2f} "
              f"{r['median_ms'] / o['median_ms']:>7.2f}   {check}")
PY
