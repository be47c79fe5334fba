#!/usr/bin/env python3
"""Checks that a regenerated MODEL.expected.json matches the committed one.

Usage: python models/reference/onnx/compare_expected.py COMMITTED.json REGENERATED.json

The regenerated file comes from the same pinned script on another machine: Keras builds and
calibrates the model there (oneDNN's kernels differ between CPUs in the last bits), and ONNX
Runtime runs it there. So the outputs are compared with the relative measure the Rust tests
use (largest absolute difference over the largest magnitude) at a bound 10x tighter than
theirs (1e-5), and everything else in the file (model, photos, normalisation, layout,
versions) must be identical.
"""

import json
import sys

import numpy as np

BOUND = 1e-5


def main(committed, regenerated):
    with open(committed) as f:
        a = json.load(f)
    with open(regenerated) as f:
        b = json.load(f)
    want = np.asarray(a.pop("logits"), dtype=np.float64)
    got = np.asarray(b.pop("logits"), dtype=np.float64)
    if a != b:
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        sys.exit(f"{regenerated}: differs from {committed} in {keys}")
    if want.shape != got.shape:
        sys.exit(f"{regenerated}: logits shape {got.shape}, committed {want.shape}")
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    top1 = (got.argmax(axis=-1) == want.argmax(axis=-1)).all()
    print(f"{regenerated}: logits max rel diff {rel:.2e} (bound {BOUND:.0e}), top-1 identical: {top1}")
    if not rel <= BOUND or not top1:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
