#!/usr/bin/env python3
"""ONNX Runtime reference logits for every .onnx file in a directory, on the sample photos.

Inputs: the photos in models/samples/imagenet (cat, grace_hopper, bird, dragonfly,
hot_dog). Each is opened with PIL, converted to RGB, resized to 224x224 with
Image.resize((224, 224), Image.BILINEAR) (no crop, aspect ratio not kept) and saved as an
8-bit RGB PNG <photo>_224.png in --photos-out: the Rust side reads exactly these pixels and
needs no resize or JPEG decoder of its own. The batch is then, in float32, NCHW,
(p / 255 - mean) / std with ImageNet mean [0.485, 0.456, 0.406] and std
[0.229, 0.224, 0.225], photos in the order listed in the JSON files.

ORT: CPUExecutionProvider, graph_optimization_level ORT_DISABLE_ALL (the graph is run as
stored, no fusions), one run on the whole batch. For each MODEL.onnx it writes
MODEL.expected.json next to it:

    {"model": "MODEL.onnx", "photos": ["cat_224.png", ...], "mean": [...], "std": [...],
     "layout": "NCHW", "onnxruntime": "<version>", "graph_optimization_level": "ORT_DISABLE_ALL",
     "logits": [[...], ...]}

one logits row per photo ("layout" is "NHWC", and the batch is fed transposed, for a
model whose input has its 3 channels last, as Keras exports do), each float32 value written as Python repr() of its float value
(parsing it and rounding to float32 gives the value back exactly). It also runs ORT with
the default optimisation level (ORT_ENABLE_ALL) and prints the largest relative difference
(max |a - b| / max |b|) to show how much an optimised graph moves the logits.

    target/onnx-venv/bin/python models/reference/onnx/reference.py --models models/tests/onnx
    target/onnx-venv/bin/python models/reference/onnx/reference.py --models target/onnx-models
"""

import argparse
import glob
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.normpath(os.path.join(HERE, "..", "..", "samples", "imagenet"))
PHOTOS = ["cat.png", "grace_hopper.png", "bird.png", "dragonfly.png", "hot_dog.jpg"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SIZE = 224


def photo_batch(samples=SAMPLES):
    """(png names, list of 224x224x3 uint8 arrays, float32 NCHW normalised batch)."""
    names, pixels = [], []
    for photo in PHOTOS:
        with Image.open(os.path.join(samples, photo)) as im:
            small = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        names.append(os.path.splitext(photo)[0] + "_224.png")
        pixels.append(np.asarray(small, dtype=np.uint8))
    x = np.stack(pixels).astype(np.float32) / np.float32(255.0)
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    return names, pixels, np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def prepare_photos(samples, out):
    """Save the 224x224 PNGs into out, return (png names, float32 NCHW batch)."""
    names, pixels, x = photo_batch(samples)
    for name, px in zip(names, pixels):
        path = os.path.join(out, name)
        Image.fromarray(px, "RGB").save(path, format="PNG", optimize=True)
        with Image.open(path) as back:  # exactly what the Rust side will read
            assert back.mode == "RGB" and back.size == (SIZE, SIZE)
            assert np.array_equal(np.asarray(back, dtype=np.uint8), px)
    return names, x


def run(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (y,) = sess.run(["logits"], {"input": x})
    return y


def input_layout(path):
    """"NHWC" for a model whose input has 3 channels last (a Keras export), else "NCHW"."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    dims = sess.get_inputs()[0].shape
    return "NHWC" if len(dims) == 4 and dims[3] == 3 and dims[1] != 3 else "NCHW"


def write_expected(path, out, names=None, x=None):
    """Write MODEL.expected.json for path into out (x: the NCHW batch, fed as the model's
    input layout wants it)."""
    if x is None:
        names, _, x = photo_batch()
    layout = input_layout(path)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    y_opt = run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    rel_opt = float(np.abs(y - y_opt).max() / np.abs(y).max())
    e = np.exp(y - y.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    # how much the logits depend on the photo: std over photos (mean over classes)
    # relative to the std of all logits
    photo_dep = float(y.std(0).mean() / y.std())
    base = os.path.splitext(os.path.basename(path))[0]
    doc = {
        "model": base + ".onnx",
        "photos": names,
        "mean": MEAN,
        "std": STD,
        "layout": layout,
        "onnxruntime": ort.__version__,
        "graph_optimization_level": "ORT_DISABLE_ALL",
        "logits": "@LOGITS@",
    }
    rows = ",\n  ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in y)
    text = json.dumps(doc, indent=1).replace('"@LOGITS@"', "[\n  " + rows + "\n ]")
    assert np.array_equal(np.array(json.loads(text)["logits"], dtype=np.float32), y)
    with open(os.path.join(out, base + ".expected.json"), "w") as f:
        f.write(text + "\n")
    print(
        f"{base}: {layout} input, logits {list(y.shape)} std {y.std():.3f} (photo-dependent "
        f"{photo_dep:.2f}), max softmax {p.max():.3f}, top-1 {y.argmax(1).tolist()}, "
        f"ORT_ENABLE_ALL vs ORT_DISABLE_ALL rel {rel_opt:.1e}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="directory with MODEL.onnx files")
    ap.add_argument("--photos-out", help="where the 224x224 PNGs go (default: --models)")
    ap.add_argument("--samples", default=SAMPLES, help="directory with the original photos")
    args = ap.parse_args()
    out = args.photos_out or args.models
    os.makedirs(out, exist_ok=True)
    names, x = prepare_photos(args.samples, out)
    print(f"onnxruntime {ort.__version__}; input {list(x.shape)} from {names}")
    for path in sorted(glob.glob(os.path.join(args.models, "*.onnx"))):
        write_expected(path, args.models, names, x)


if __name__ == "__main__":
    main()
