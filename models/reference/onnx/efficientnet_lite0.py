#!/usr/bin/env python3
"""EfficientNet-Lite0 (the pretrained ImageNet checkpoint) as ONNX, built without torch.

The graph is written node by node with the `onnx` package's helper API, from the
architecture of models/src/efficientnet_lite0.rs (and its independent numpy twin,
efficientnet_lite0_forward in models/reference/golden.py):

  stem    Conv 3x3 s2 (3 -> 32) + BatchNormalization + ReLU6
  blocks  16 MBConv blocks, in checkpoint order (_blocks.0 .. _blocks.15), from the table
          (repeats, kernel, stride, expand, in, out) below; each block is
            [expand Conv 1x1 + BN + ReLU6]   (absent when expand == 1, i.e. _blocks.0)
            depthwise Conv kxk (group = channels, stride on the first block of a stage)
              + BN + ReLU6
            project Conv 1x1 + BN            (no activation)
            + Add of the block input when stride == 1 and in == out
          no squeeze-and-excitation, ReLU6 everywhere (the "Lite" variant)
  head    Conv 1x1 (320 -> 1280) + BN + ReLU6, GlobalAveragePool, Flatten, Gemm (_fc)

Opset 13, IR version 7 (as the torch-exported files next to it). Input "input" float32
[batch, 3, 224, 224] (dim_param "batch"), output "logits" [batch, 1000]. Every convolution
has bias-free weights and explicit `pads` [top, left, bottom, right] computed as
TensorFlow "SAME" for a 224x224 input (the checkpoint was trained in TensorFlow): total
padding max((ceil(n / s) - 1) * s + k - n, 0), half of it before and the odd one after, so a
stride-2 3x3 conv on an even map pads (0, 1) and a stride-2 5x5 one (1, 2). The file is
therefore only valid at 224x224: other sizes would need other pads. BatchNormalization
stays a node of its own (epsilon 1e-3, the checkpoint's running statistics; nothing is
folded). ReLU6 is Clip with min 0 and max 6 as the constant initializer inputs
"relu6_min" / "relu6_max" (opset >= 11 style). Gemm has transB = 1 with _fc.weight
[1000, 1280] and _fc.bias. Every weight initializer keeps the checkpoint's tensor name,
and all 247 checkpoint tensors are used. The model is checked with onnx.checker (full
check) and strict shape inference, and the inferred shape of every node output is compared
with the shape this script expects.

ONNX Runtime then runs it (CPUExecutionProvider, ORT_DISABLE_ALL as reference.py) on the
five 224x224 reference photos models/tests/onnx/{cat,grace_hopper,bird,dragonfly,hot_dog}_224.png,
preprocessed exactly as models/manifests/efficientnet-lite0.json says for an image that is
already 224x224 ("center-crop" of a 224x224 square to 224x224 is the identity): in float32,
per channel, (pixel * scale - mean[c]) / std[c], NCHW -- the same float32 operations as
runtime/src/pipeline/frame.rs. It writes, in --out:

  efficientnet_lite0.onnx            (~19 MB, not committed)
  efficientnet_lite0.expected.json   the format of models/tests/onnx/*.expected.json
                                     (model, photos, mean, std, layout, onnxruntime,
                                     graph_optimization_level, logits) plus "scale"

prints each photo's top-1 ImageNet label (models/samples/imagenet/imagenet_labels.txt, line
1 "background" dropped) with its softmax probability, and cross-checks the ORT logits
against golden.py's float64 numpy implementation on the same float32 batch (max |a - b| /
max |b|; skip with --no-golden, which is what takes most of the run time).

Only onnx, onnxruntime, numpy, pillow and safetensors are needed
(requirements-lite0.txt next to this script; no torch):

    python3 -m venv target/lite0-venv
    target/lite0-venv/bin/pip install -r models/reference/onnx/requirements-lite0.txt
    target/lite0-venv/bin/python models/reference/onnx/efficientnet_lite0.py \\
        --weights ../shared/data/efficientnet-lite0/efficientnet_lite0.safetensors \\
        --out target/onnx-models
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
MANIFEST = os.path.join(REPO, "models", "manifests", "efficientnet-lite0.json")
PHOTO_DIR = os.path.join(REPO, "models", "tests", "onnx")
LABELS = os.path.join(REPO, "models", "samples", "imagenet", "imagenet_labels.txt")
PHOTOS = ["cat_224.png", "grace_hopper_224.png", "bird_224.png", "dragonfly_224.png", "hot_dog_224.png"]
NAME = "efficientnet_lite0"
OPSET = 13
IR_VERSION = 7  # the lowest IR version that opset 13 allows; what torch writes for it
SIZE = 224
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CLASSES = 1000
# (repeats, kernel, stride of the first block, expand, in, out): STAGES in efficientnet_lite0.rs.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def blocks():
    """(kernel, stride, expand, in, out) of the 16 blocks in _blocks.N order."""
    out = []
    for repeats, k, s, e, c_in, c_out in STAGES:
        for r in range(repeats):
            out.append((k, s if r == 0 else 1, e, c_in if r == 0 else c_out, c_out))
    return out


def same_pads(size, k, stride):
    """TensorFlow SAME along one axis: (before, after, output size); the odd zero goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2, out


class Builder:
    """Appends nodes and initializers; tracks the expected shape [C, H, W] of every value."""

    def __init__(self, weights):
        self.w = weights
        self.used = set()
        self.nodes = []
        self.inits = []
        self.shapes = {}  # value name -> expected shape without the batch dim

    def weight(self, name, shape):
        arr = self.w[name]
        if list(arr.shape) != list(shape) or arr.dtype != np.float32:
            raise ValueError(f"{name}: checkpoint has {arr.dtype} {list(arr.shape)}, expected f32 {list(shape)}")
        if name in self.used:
            raise ValueError(f"{name} used twice")
        self.used.add(name)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op, name, inputs, shape, **attrs):
        out = name + "_output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.shapes[out] = list(shape)
        return out

    def conv(self, x, name, c_out, k, stride, group=1):
        c_in, h, w = self.shapes[x]
        top, bottom, oh = same_pads(h, k, stride)
        left, right, ow = same_pads(w, k, stride)
        wt = self.weight(name + ".weight", [c_out, c_in // group, k, k])
        return self.node(
            "Conv", name, [x, wt], [c_out, oh, ow],
            dilations=[1, 1], group=group, kernel_shape=[k, k],
            pads=[top, left, bottom, right], strides=[stride, stride],
        )  # fmt: skip

    def bn(self, x, name):
        c = self.shapes[x][0]
        params = [self.weight(f"{name}.{s}", [c]) for s in ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", name, [x] + params, self.shapes[x], epsilon=BN_EPS)

    def relu6(self, x, name):
        return self.node("Clip", name, [x, "relu6_min", "relu6_max"], self.shapes[x])


def build_model(weights, source):
    b = Builder(weights)
    b.inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6_min"))
    b.inits.append(numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6_max"))
    b.shapes["input"] = [3, SIZE, SIZE]

    x = b.conv("input", "_conv_stem", STEM_CHANNELS, 3, 2)
    x = b.relu6(b.bn(x, "_bn0"), "_relu6_stem")
    for i, (k, s, e, c_in, c_out) in enumerate(blocks()):
        p = f"_blocks.{i}."
        assert b.shapes[x][0] == c_in, (i, b.shapes[x], c_in)
        inp, hidden = x, c_in * e
        if e != 1:
            x = b.relu6(b.bn(b.conv(x, p + "_expand_conv", hidden, 1, 1), p + "_bn0"), p + "_relu6_0")
        x = b.relu6(b.bn(b.conv(x, p + "_depthwise_conv", hidden, k, s, group=hidden), p + "_bn1"), p + "_relu6_1")
        x = b.bn(b.conv(x, p + "_project_conv", c_out, 1, 1), p + "_bn2")
        if s == 1 and c_in == c_out:
            x = b.node("Add", p + "_add", [x, inp], b.shapes[x])
    x = b.relu6(b.bn(b.conv(x, "_conv_head", HEAD_CHANNELS, 1, 1), "_bn1"), "_relu6_head")
    x = b.node("GlobalAveragePool", "_avg_pool", [x], [HEAD_CHANNELS, 1, 1])
    x = b.node("Flatten", "_flatten", [x], [HEAD_CHANNELS], axis=1)
    fc_w = b.weight("_fc.weight", [CLASSES, HEAD_CHANNELS])
    fc_b = b.weight("_fc.bias", [CLASSES])
    b.nodes.append(helper.make_node("Gemm", [x, fc_w, fc_b], ["logits"], name="_fc", alpha=1.0, beta=1.0, transB=1))
    b.shapes["logits"] = [CLASSES]

    unused = sorted(set(weights) - b.used)
    if unused:
        raise ValueError(f"checkpoint tensors not in the graph: {unused}")

    graph = helper.make_graph(
        b.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgemm models/reference/onnx/efficientnet_lite0.py",
        producer_version=onnx.__version__,
        doc_string=(
            "EfficientNet-Lite0, ImageNet-1k; weights unchanged from " + source + "; TF-SAME pads for 224x224 input"
        ),
    )
    return model, b.shapes


def check_model(model, expected_shapes):
    """onnx.checker (full check) + strict shape inference; every node output as expected."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    got = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        got[vi.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    for name, shape in expected_shapes.items():
        if name == "input":
            continue
        if got.get(name) != ["batch"] + shape:
            raise AssertionError(f"{name}: shape inference gives {got.get(name)}, expected {['batch'] + shape}")
    return len(got)


def load_manifest_input():
    with open(MANIFEST, encoding="utf-8") as f:
        spec = json.load(f)["input"]
    assert (spec["height"], spec["width"], spec["channels"]) == (SIZE, SIZE, 3), spec
    assert spec["tensor_values"] == "unit" and spec["resize"] == "center-crop", spec
    return spec


def photo_batch(spec, divide=False):
    """float32 NCHW batch: (p * scale - mean[c]) / std[c], each operation rounded to float32.

    divide=True: (p / 255 - mean[c]) / std[c] instead, as models/tests/onnx.rs computes it.
    """
    scale = np.float32(spec["scale"])
    mean = np.array(spec["mean"], dtype=np.float32)
    std = np.array(spec["std"], dtype=np.float32)
    pixels = []
    for photo in PHOTOS:
        with Image.open(os.path.join(PHOTO_DIR, photo)) as im:
            # Already 224x224: the manifest's centre crop + resize is the identity.
            assert im.mode == "RGB" and im.size == (SIZE, SIZE), (photo, im.mode, im.size)
            pixels.append(np.asarray(im, dtype=np.uint8))
    p = np.stack(pixels).astype(np.float32)  # NHWC
    unit = p / np.float32(255.0) if divide else p * scale
    x = (unit - mean) / std
    assert x.dtype == np.float32
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_ort(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (y,) = sess.run(["logits"], {"input": x})
    return y


def softmax(y):
    e = np.exp(y - y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / np.abs(b).max())


def golden_logits(weights, x):
    """golden.py's float64 numpy forward pass (TF-SAME) on the same float32 batch."""
    sys.path.insert(0, os.path.dirname(HERE))
    import golden  # noqa: E402  (models/reference/golden.py: numpy + its two local decoders)

    return golden.efficientnet_lite0_forward(weights, x.transpose(0, 2, 3, 1), "same")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--weights",
        default=os.path.join("..", "shared", "data", "efficientnet-lite0", "efficientnet_lite0.safetensors"),
        help="the efficientnet_pytorch-named safetensors checkpoint",
    )
    ap.add_argument("--out", default=os.path.join("target", "onnx-models"), help="output directory")
    ap.add_argument("--no-golden", action="store_true", help="skip the numpy cross-check (golden.py)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    with open(args.weights, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    weights = load_file(args.weights)
    print(f"{args.weights}: {len(weights)} tensors, sha256 {sha}")

    model, shapes = build_model(weights, os.path.basename(args.weights) + " (sha256 " + sha + ")")
    n_inferred = check_model(model, shapes)
    path = os.path.join(args.out, NAME + ".onnx")
    onnx.save_model(model, path)
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(
        f"wrote {path} ({os.path.getsize(path)} bytes): opset {OPSET}, IR {IR_VERSION}, "
        f"{len(model.graph.node)} nodes {ops}, {len(model.graph.initializer)} initializers; "
        f"checker (full) and strict shape inference OK ({n_inferred} shapes, all as expected)"
    )

    spec = load_manifest_input()
    x = photo_batch(spec)
    y = run_ort(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    assert y.shape == (len(PHOTOS), CLASSES) and y.dtype == np.float32, (y.shape, y.dtype)
    y_opt = run_ort(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    # models/tests/onnx.rs normalises with p / 255 rather than p * scale: many inputs differ
    # by an ulp; how far does that move the logits?
    x255 = photo_batch(spec, divide=True)
    y255 = run_ort(path, x255, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)

    doc = {
        "model": NAME + ".onnx",
        "photos": PHOTOS,
        "scale": spec["scale"],
        "mean": spec["mean"],
        "std": spec["std"],
        "layout": "NCHW",
        "onnxruntime": ort.__version__,
        "graph_optimization_level": "ORT_DISABLE_ALL",
        "logits": "@LOGITS@",
    }
    rows = ",\n  ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in y)
    text = json.dumps(doc, indent=1).replace('"@LOGITS@"', "[\n  " + rows + "\n ]")
    assert np.array_equal(np.array(json.loads(text)["logits"], dtype=np.float32), y)
    jpath = os.path.join(args.out, NAME + ".expected.json")
    with open(jpath, "w") as f:
        f.write(text + "\n")
    print(f"wrote {jpath} ({os.path.getsize(jpath)} bytes); onnxruntime {ort.__version__}, input {list(x.shape)}")

    with open(LABELS, encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f][1:]  # line 1 is "background"
    assert len(labels) == CLASSES
    prob = softmax(y.astype(np.float64))
    for photo, pr in zip(PHOTOS, prob):
        top = int(np.argmax(pr))
        print(f"  {photo:21s} top-1 {top:4d} {labels[top]!r} p={pr[top]:.4f}")
    print(f"ORT_ENABLE_ALL vs ORT_DISABLE_ALL: max rel diff {rel(y_opt, y):.2e}")
    print(
        f"p / 255 instead of p * scale: {int((x255 != x).sum())} of {x.size} inputs differ, "
        f"logits max rel diff {rel(y255, y):.2e}"
    )

    if not args.no_golden:
        t1 = time.time()
        g = golden_logits(weights, x)
        same_top1 = bool((g.argmax(1) == y.argmax(1)).all())
        print(
            f"ORT vs golden.py numpy float64 ({time.time() - t1:.1f} s): max rel diff {rel(y, g):.2e}, "
            f"max abs diff {float(np.abs(y - g).max()):.2e}, top-1 {'identical' if same_top1 else 'DIFFERENT'}"
        )
        if not same_top1:
            sys.exit("ORT and golden.py disagree on a top-1 class")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
