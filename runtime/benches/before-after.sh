#!/usr/bin/env bash
# The same benchmark built at two commits, run in turns in one invocation: is a change slower?
#
#   bash runtime/benches/before-after.sh BEFORE_BIN AFTER_BIN [--rounds 6] [--runs 10]
#                                        [--warmup-ms 500] [--models a,b] [--threads N]
#
# BEFORE_BIN and AFTER_BIN are the `models` bench (runtime/benches/models.rs) built at each
# commit, e.g. for the commit checked out:
#
#   cargo bench -p edgemm --bench models --no-run   # prints "Executable ... (target/release/deps/models-HASH)"
#
# The first round writes the weights (seeded, the same for both) and each later run reuses
# them. The two binaries take turns, BEFORE first in odd rounds and AFTER first in even ones,
# so a slow spell of a shared machine falls on both alike; each median is over all rounds'
# runs, and the per-round ratios' range is printed beside it. Every run's time is left in
# target/bench-before-after/*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:?usage: before-after.sh BEFORE_BIN AFTER_BIN [options]}
after=${2:?usage: before-after.sh BEFORE_BIN AFTER_BIN [options]}
shift 2
rounds=6 runs=10 warmup_ms=500 threads=$(nproc) models=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --warmup-ms) warmup_ms=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --models) models=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
work=$(pwd)/target/bench-before-after
rm -rf "$work" && mkdir -p "$work"
export RAYON_NUM_THREADS=$threads
extra=()
[ -n "$models" ] && extra=(--models "$models")
run() { # run LABEL BIN [--reuse]
    local label=$1 bin=$2
    shift 2
    "$bin" --work "$work" --runs "$runs" --warmup-ms "$warmup_ms" "${extra[@]}" "$@" \
        | sed "s/\"runtime\":\"edgemm\"/\"runtime\":\"$label\"/" >>"$work/runs.jsonl"
}
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    if [ "$round" = 1 ]; then
        run before "$before"
        run after "$after" --reuse
    elif [ $((round % 2)) = 0 ]; then
        run after "$after" --reuse
        run before "$before" --reuse
    else
        run before "$before" --reuse
        run after "$after" --reuse
    fi
done
python3 - "$work" "$threads" <<'PY'
import collections, json, platform, statistics, sys
work, threads = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{work}/runs.jsonl") if l.startswith("{")]
times, rounds = collections.defaultdict(list), collections.defaultdict(list)
for r in rows:
    if r.get("runtime") not in ("before", "after"):
        continue
    key = (r["runtime"], r["model"], r["batch"])
    times[key] += r["times_ms"]
    rounds[key].append(r["median_ms"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{cpu}, {threads} threads")
print(f"{'model':<15}{'batch':>6}{'runs':>6}{'before ms':>11}{'after ms':>10}{'ratio':>7}  per-round ratios")
for (label, model, batch) in sorted(k for k in times if k[0] == "before"):
    b, a = times[("before", model, batch)], times[("after", model, batch)]
    mb, ma = statistics.median(b), statistics.median(a)
    per = [y / x for x, y in zip(rounds[("before", model, batch)], rounds[("after", model, batch)])]
    print(f"{model:<15}{batch:>6}{len(a):>6}{mb:>11.2f}{ma:>10.2f}{ma / mb:>7.2f}  {min(per):.2f}-{max(per):.2f}")
PY
