#!/usr/bin/env bash
# edgemm against ONNX Runtime on identical weights, in one invocation (issue #8):
# batch 1 and 8, warm, median of RUNS, same thread count; prints latency ratios.
#
#   bash runtime/benches/vs-onnxruntime.sh [--runs 20] [--threads N] [--models a,b]
#                                          [--kernels fast|reference|portable|avx2|avx512|neon]
#
# Installs onnx and onnxruntime from PyPI into target/ort-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=20 threads=$(nproc) models="" kernels=fast
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --kernels) kernels=$2; shift 2 ;;
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
cargo bench --quiet -p edgemm --bench models -- --work "$work" --runs "$runs" \
    --kernels "$kernels" "${extra[@]}" \
    | tee "$work/edgemm.jsonl"
"$venv/bin/python" models/reference/bench_ort.py --work "$work" --threads "$threads" \
    --runs "$runs" | tee "$work/ort.jsonl"
"$venv/bin/python" - "$work" "$threads" <<'PY'
import json, sys
work, threads = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for f in ("edgemm.jsonl", "ort.jsonl") for l in open(f"{work}/{f}")]
t = {(r["runtime"], r["model"], r.get("batch")): r for r in rows}
kernels = next((r["kernels"] for r in rows if r["runtime"] == "edgemm"), "?")
print(f"\nedgemm ({kernels}) vs ONNX Runtime, {threads} threads, medians "
      f"(ratio = edgemm / ORT; < 1 is faster)")
print(f"{'model':<16} {'batch':>5} {'edgemm ms':>10} {'ORT ms':>10} {'ratio':>7} "
      f"{'conv GFLOP/s':>13} {'edgemm peak RSS':>16}   graph check")
for (rt, model, batch), r in sorted(t.items()):
    if rt != "edgemm":
        continue
    o = t.get(("onnxruntime", model, batch))
    c = t.get(("check", model, None))
    check = f"max rel err {c['max_relative_error']:.1e}" if c else "-"
    gflops = f"{r['conv_gflops']:.0f}" if r.get("conv_gflops") else "-"
    rss = f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "-"
    if o:
        print(f"{model:<16} {batch:>5} {r['median_ms']:>10.2f} {o['median_ms']:>10.2f} "
              f"{r['median_ms'] / o['median_ms']:>7.2f} {gflops:>13} {rss:>16}   {check}")
PY
