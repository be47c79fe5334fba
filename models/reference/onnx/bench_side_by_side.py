#!/usr/bin/env python3
"""edgemm against ONNX Runtime on the same ONNX files, in one run (issue #20).

edgemm's side is the bench binary `models/benches/onnx.rs` (import, plan for the best
instruction set, warm-up by time, timed forwards); ORT's is an InferenceSession on the
CPUExecutionProvider with default graph optimisations (ORT_ENABLE_ALL) and
intra_op_num_threads = --threads (default 2; edgemm gets RAYON_NUM_THREADS = the same).
Both time batch 1 and batch 8 on a standard-normal [N, 3, H, W] input (the graph's declared
size, else 224 x 224): untimed runs for --warmup-ms (default 500, at least one), then
--runs1 / --runs8 timed runs (default 50 / 20) per round.

The two runtimes take turns, model by model, for --rounds rounds (default 3): edgemm first
in odd rounds, ORT first in even ones, so that a slow spell of a shared machine falls on
both alike. Each median and fastest tenth (10th percentile) is over all rounds' runs; the
spread of the per-round ratios is printed too. Every run's time goes to --out (JSON lines).
Before timing it waits while a rustc runs (a build on the same cores makes the numbers
meaningless; --no-wait to skip), and it says whether one started while it was timing
(pgrep every second) and what the load average was before and after.

Run from the repository root, with the venv of requirements.txt (numpy, onnxruntime):

    target/onnx-venv/bin/python models/reference/onnx/bench_side_by_side.py \\
        target/onnx-models/mobilenet_v3_large.onnx target/onnx-models/mobilenet_v3_small.onnx \\
        target/onnx-models/resnet50.onnx

    # also edgemm's per-step time at batch 1 (top 15 steps, their kernels), after the table:
    target/onnx-venv/bin/python models/reference/onnx/bench_side_by_side.py --steps FILE.onnx

With no files it takes the full-size exports in target/onnx-models (export.py) if there are
any, else the small committed models in models/tests/onnx. It builds the bench first
(`cargo bench -p edgemm-models --bench onnx --no-run`) and runs the binary directly.
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "unknown CPU"


def wait_for_builds():
    """Waits while a rustc runs on this machine."""
    announced = False
    while subprocess.run(["pgrep", "-f", "rustc"], capture_output=True).returncode == 0:
        if not announced:
            print("a rustc is running; waiting for it to finish before timing", file=sys.stderr,
                  flush=True)
            announced = True
        time.sleep(10)


class BuildWatch:
    """Samples `pgrep -f rustc` every second on a thread: a build that starts while timing
    (it takes both cores) is reported with the results."""

    def __init__(self):
        self.samples = self.busy = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(1.0):
            self.samples += 1
            if subprocess.run(["pgrep", "-f", "rustc"], capture_output=True).returncode == 0:
                self.busy += 1

    def report(self):
        if self.busy:
            return (f"WARNING: a rustc ran during {self.busy} of {self.samples} one-second samples "
                    f"of the timing: the numbers are not clean")
        return f"no rustc ran during the timing ({self.samples} one-second samples)"


def build_bench():
    """The path of the bench binary, built if needed."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "edgemm-models", "--bench", "onnx", "--no-run",
         "--message-format=json"],
        cwd=ROOT, capture_output=True, text=True)
    exe = None
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "onnx"
                and "bench" in msg["target"]["kind"] and msg.get("executable")):
            exe = msg["executable"]
    if out.returncode != 0 or exe is None:
        sys.stderr.write(out.stderr)
        raise SystemExit("building the onnx bench failed")
    return exe


def stats(times):
    s = sorted(times)
    return s[len(s) // 2], s[len(s) // 10]


class Ort:
    def __init__(self, path, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.input = inp.name
        dims = inp.shape
        h = dims[2] if isinstance(dims[2], int) else 224
        w = dims[3] if isinstance(dims[3], int) else 224
        self.size = (h, w)

    def time(self, batch, warmup_ms, runs):
        x = np.random.default_rng(20).standard_normal((batch, 3) + self.size, dtype=np.float32)
        feed = {self.input: x}
        warm = time.perf_counter()
        self.sess.run(None, feed)
        while (time.perf_counter() - warm) * 1e3 < warmup_ms:
            self.sess.run(None, feed)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            self.sess.run(None, feed)
            times.append((time.perf_counter() - t) * 1e3)
        return times


def edgemm(exe, path, args, env):
    """{batch: times} from one run of the bench binary on one file."""
    rows = {}
    for batch, runs in ((1, args.runs1), (8, args.runs8)):
        out = subprocess.run(
            [exe, path, "--json", "--batches", str(batch), "--runs", str(runs),
             "--warmup-ms", str(args.warmup_ms)],
            capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"edgemm's bench failed on {path}")
        for line in out.stdout.splitlines():
            r = json.loads(line)
            rows[r["batch"]] = r
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-ms", type=float, default=500.0)
    ap.add_argument("--runs1", type=int, default=50, help="timed runs at batch 1, per round")
    ap.add_argument("--runs8", type=int, default=20, help="timed runs at batch 8, per round")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "onnx-bench", "side_by_side.jsonl"))
    ap.add_argument("--steps", action="store_true",
                    help="after the table, edgemm's per-step time at batch 1 for each model")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for running rustc builds")
    args = ap.parse_args()
    models = args.models or sorted(glob.glob(os.path.join(ROOT, "target", "onnx-models", "*.onnx"))) \
        or sorted(glob.glob(os.path.join(ROOT, "models", "tests", "onnx", "*.onnx")))
    models = [os.path.abspath(m) for m in models]
    exe = build_bench()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.pop("EDGEMM_PROFILE_STEPS", None)
    cpu = cpu_model()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    sessions = {m: Ort(m, args.threads) for m in models}
    if not args.no_wait:
        wait_for_builds()
    load_before = os.getloadavg()[0]
    watch = BuildWatch()
    times = collections.defaultdict(list)   # (runtime, model, batch) -> all runs' times
    rounds = collections.defaultdict(list)  # (runtime, model, batch) -> per-round medians
    isa = None
    with open(args.out, "w") as log:
        for rnd in range(1, args.rounds + 1):
            print(f"round {rnd} of {args.rounds}", file=sys.stderr, flush=True)
            for m in models:
                name = os.path.splitext(os.path.basename(m))[0]
                order = ("edgemm", "ort") if rnd % 2 else ("ort", "edgemm")
                for runtime in order:
                    if runtime == "edgemm":
                        rows = edgemm(exe, m, args, env)
                        for batch, r in rows.items():
                            isa = r["isa"]
                            got = r["times_ms"]
                            times[(runtime, name, batch)] += got
                            rounds[(runtime, name, batch)].append(stats(got)[0])
                            log.write(json.dumps(dict(r, round=rnd)) + "\n")
                    else:
                        for batch, runs in ((1, args.runs1), (8, args.runs8)):
                            got = sessions[m].time(batch, args.warmup_ms, runs)
                            times[(runtime, name, batch)] += got
                            rounds[(runtime, name, batch)].append(stats(got)[0])
                            log.write(json.dumps({
                                "runtime": "onnxruntime", "version": ort.__version__,
                                "model": name, "batch": batch, "threads": args.threads,
                                "round": rnd, "median_ms": stats(got)[0], "times_ms": got}) + "\n")
                log.flush()
    load_after = os.getloadavg()[0]

    print(f"\nCPU: {cpu} ({os.cpu_count()} CPUs); threads {args.threads}; edgemm kernels {isa}; "
          f"onnxruntime {ort.__version__} (CPUExecutionProvider, ORT_ENABLE_ALL)")
    print(f"{args.rounds} rounds of {args.runs1} (batch 1) / {args.runs8} (batch 8) runs each, "
          f"warm-up {args.warmup_ms:.0f} ms; load average {load_before:.2f} before, "
          f"{load_after:.2f} after")
    header = ("model", "batch", "ORT median ms", "edgemm median ms", "edgemm/ORT",
              "ORT tenth ms", "edgemm tenth ms", "per-round ratios")
    table = []
    for m in models:
        name = os.path.splitext(os.path.basename(m))[0]
        for batch in (1, 8):
            o_med, o_ten = stats(times[("ort", name, batch)])
            e_med, e_ten = stats(times[("edgemm", name, batch)])
            per_round = [e / o for e, o in zip(rounds[("edgemm", name, batch)],
                                               rounds[("ort", name, batch)])]
            table.append((name, str(batch), f"{o_med:.2f}", f"{e_med:.2f}", f"{e_med / o_med:.2f}",
                          f"{o_ten:.2f}", f"{e_ten:.2f}",
                          f"{min(per_round):.2f}-{max(per_round):.2f}"))
    widths = [max(len(r[i]) for r in table + [header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print(f"(every run: {args.out}); {watch.report()}", flush=True)

    if args.steps:
        for m in models:
            print(flush=True)
            subprocess.run([exe, m, "--batches", "1", "--runs", str(args.runs1), "--warmup-ms",
                            str(args.warmup_ms), "--steps"], env=env, check=True)
        print(f"\nsteps: {watch.report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
