#!/usr/bin/env python3
"""Median ORT latency of ONNX files at batch 1 and batch 8 (CPUExecutionProvider).

Default session options (graph optimisation ORT_ENABLE_ALL) except intra_op_num_threads.
Per model and batch: untimed runs for --warmup seconds (at least one), then --runs1 (batch 1)
or --runs8 (batch 8) timed runs of sess.run; prints one JSON line with the median and all
run times in ms, plus the load average before and after (another process on the cores
makes the numbers meaningless). Input: the sample photos (reference.photo_batch), repeated
to fill the batch.

    target/onnx-venv/bin/python models/reference/onnx/latency.py \\
        target/onnx-models/mobilenet_v3_large.onnx target/onnx-models/resnet50.onnx
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import photo_batch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds")
    ap.add_argument("--runs1", type=int, default=50)
    ap.add_argument("--runs8", type=int, default=20)
    args = ap.parse_args()
    x5 = photo_batch()[2]
    for path in args.models:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for batch, runs in ((1, args.runs1), (8, args.runs8)):
            x = np.ascontiguousarray(np.resize(x5, (batch,) + x5.shape[1:]))
            load0 = os.getloadavg()[0]
            t_end = time.perf_counter() + args.warmup
            while True:
                sess.run(None, {"input": x})
                if time.perf_counter() >= t_end:
                    break
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, {"input": x})
                times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({
                "model": os.path.basename(path), "batch": batch, "threads": args.threads,
                "onnxruntime": ort.__version__, "median_ms": round(statistics.median(times), 3),
                "min_ms": round(min(times), 3), "runs": runs,
                "loadavg_before": load0, "loadavg_after": os.getloadavg()[0],
                "times_ms": [round(t, 3) for t in times],
            }), flush=True)


if __name__ == "__main__":
    main()
