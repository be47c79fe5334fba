#!/usr/bin/env bash
# edgemm against ONNX Runtime on identical weights, in one invocation (issue #8):
# batch 1 and 8, warm, same thread count; prints latency ratios of the medians.
#
#   bash runtime/benches/vs-onnxruntime.sh [--rounds 5] [--runs 10] [--warmup-ms 500] [--threads N]
#                                          [--models a,b]
#                                          [--kernels fast|reference|portable|avx2|avx512|neon]
#                                          [--dtype f32|f16]
#
# Each side first runs untimed for WARMUP_MS per batch size (at least once), the same for both:
# a freshly loaded process runs its first milliseconds of forwards slower on a VM (after one
# warm-up run, alexnet-small's first timed runs were 1.3-2.5x the steady time, ORT's 1.2-1.3x).
# The two runtimes take turns: ROUNDS rounds of RUNS timed runs each (warm), edgemm first in
# odd rounds and ORT first in even ones, so that a slow spell of a shared machine falls on
# both alike; each median is over all ROUNDS x RUNS runs. The spread of the per-round ratios
# is printed too; every run's time is in target/bench-ort/*.jsonl. Installs onnx and onnxruntime from PyPI into target/ort-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=5 runs=10 warmup_ms=500 threads=$(nproc) models="" kernels=fast dtype=f32
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --warmup-ms) warmup_ms=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        --kernels) kernels=$2; shift 2 ;;
        --dtype) dtype=$2; shift 2 ;;
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
edgemm() {
    cargo bench --quiet -p edgemm --bench models -- --work "$work" --runs "$runs" --warmup-ms "$warmup_ms" \
        --kernels "$kernels" --dtype "$dtype" "${extra[@]}" "$@" >>"$work/edgemm.jsonl"
}
ort() {
    "$venv/bin/python" models/reference/bench_ort.py --work "$work" --threads "$threads" \
        --runs "$runs" --warmup-ms "$warmup_ms" "$@" >>"$work/ort.jsonl"
}
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    # The first round writes the weights and checks that both compute the same logits.
    if [ "$round" = 1 ]; then
        edgemm
        ort
    elif [ $((round % 2)) = 0 ]; then
        ort --reuse
        edgemm --reuse
    else
        edgemm --reuse
        ort --reuse
    fi
done
"$venv/bin/python" - "$work" "$threads" <<'PY'
import collections, json, statistics, sys
work, threads = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for f in ("edgemm.jsonl", "ort.jsonl") for l in open(f"{work}/{f}")]
checks = {r["model"]: r for r in rows if r["runtime"] == "check"}
# Per (runtime, model, batch): every run's time, and each round's median, in round order.
times, rounds = collections.defaultdict(list), collections.defaultdict(list)
rss = {}
for r in rows:
    if r["runtime"] == "check":
        continue
    key = (r["runtime"], r["model"], r["batch"])
    times[key] += r["times_ms"]
    rounds[key].append(r["median_ms"])
    if r.get("peak_rss_mib"):
        rss[key] = max(rss.get(key, 0), r["peak_rss_mib"])
kernels = next((r["kernels"] for r in rows if r["runtime"] == "edgemm"), "?")
dtype = next((r.get("dtype", "f32") for r in rows if r["runtime"] == "edgemm"), "?")
print(f"\nedgemm ({kernels}, {dtype} weights) vs ONNX Runtime, {threads} threads, medians of all runs "
      f"(ratio = edgemm / ORT; < 1 is faster; per-round ratios from lowest to highest)")
print(f"{'model':<14} {'batch':>5} {'runs':>5} {'edgemm ms':>10} {'ORT ms':>9} {'ratio':>6} "
      f"{'per-round ratios':>17} {'conv GFLOP/s':>13} {'peak RSS':>9}   graph check")
for (rt, model, batch) in sorted(times):
    o = ("onnxruntime", model, batch)
    if rt != "edgemm" or o not in times:
        continue
    e_ms = statistics.median(times[(rt, model, batch)])
    o_ms = statistics.median(times[o])
    per_round = sorted(a / b for a, b in zip(rounds[(rt, model, batch)], rounds[o]))
    spread = f"{per_round[0]:.2f}-{per_round[-1]:.2f}"
    gflops = "-"
    # The bench binary's FLOPs (its GFLOP/s times its median), over the pooled median.
    r = next((x for x in rows if x.get("conv_gflops") and x["model"] == model
              and x["batch"] == batch), None)
    if r:
        gflops = f"{r['conv_gflops'] * r['median_ms'] / e_ms:.0f}"
    c = checks.get(model)
    check = f"max rel err {c['max_relative_error']:.1e}" if c else "-"
    mib = f"{rss[(rt, model, batch)]:.0f} MiB" if (rt, model, batch) in rss else "-"
    print(f"{model:<14} {batch:>5} {len(times[(rt, model, batch)]):>5} {e_ms:>10.2f} "
          f"{o_ms:>9.2f} {e_ms / o_ms:>6.2f} {spread:>17} {gflops:>13} {mib:>9}   {check}")
PY
