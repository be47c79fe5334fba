"""Where ONNX Runtime spends its time, node by node, on a graph the ORT benchmark built.

    bash runtime/benches/vs-onnxruntime.sh --models sign-language   # builds the graph
    target/ort-venv/bin/python models/reference/ort_profile.py sign-language 224

Runs the graph from target/bench-ort 60 times at batch 1 with ORT's profiler on (same
thread count as the benchmark: nproc, or --threads) and prints the sum of the per-node
medians, the total per operator type and the slowest nodes: the counterpart of edgemm's
EDGEMM_PROFILE_STEPS=1.
"""

import argparse
import collections
import json
import os

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("size", type=int, help="input height and width")
    p.add_argument("--work", default="target/bench-ort")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=60)
    args = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(args.work, f"{args.model}.profile")
    sess = ort.InferenceSession(
        os.path.join(args.work, f"{args.model}.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    for _ in range(args.runs):
        sess.run(None, {name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)

    per_node = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"].get("op_name"), e["name"])].append(e["dur"])
    medians = sorted(
        ((key, float(np.median(d))) for key, d in per_node.items()), key=lambda r: -r[1]
    )
    by_op = collections.defaultdict(float)
    for (op, _), m in medians:
        by_op[op] += m
    print(f"{args.model}: sum of node medians {sum(m for _, m in medians):.0f} us")
    print("by operator:", ", ".join(f"{op} {t:.0f} us" for op, t in by_op.items()))
    for (op, node), m in medians[:12]:
        print(f"  {op:18s} {node[:56]:56s} {m:7.0f} us")


if __name__ == "__main__":
    main()
