#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (corpus/TARGET/seed-*): small valid inputs of
each parser and a few near-misses, so the fuzzer starts from the formats' real structure.

Usage (from runtime/fuzz): python3 seeds.py   (needs onnx, numpy and Pillow, e.g. the venv of
models/reference/onnx/requirements-lite0.txt, which has Pillow for the images too)

The files the fuzzer adds beside them (its own finds) are committed too; this script only
rewrites seed-* files.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import struct
import tarfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def safetensors(tensors):
    """Safetensors bytes of {name: float32 array}, names sorted as candle writes them."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


# The tiny alexnet-small of src/lib.rs's TINY_MANIFEST: 8x8 input, channels [2, 2, 2].
TINY_CONFIG = {"batch_norm": False, "channels": [2, 2, 2], "classes": 2, "hidden": 4, "input_size": 8}
rng = np.random.default_rng(1)
TINY_WEIGHTS = {
    "conv1.weight": rng.normal(size=(2, 3, 3, 3)), "conv1.bias": rng.normal(size=2),
    "conv2.weight": rng.normal(size=(2, 2, 3, 3)), "conv2.bias": rng.normal(size=2),
    "conv3.weight": rng.normal(size=(2, 2, 3, 3)), "conv3.bias": rng.normal(size=2),
    "fc1.weight": rng.normal(size=(4, 2)), "fc1.bias": rng.normal(size=4),
    "fc2.weight": rng.normal(size=(2, 4)), "fc2.bias": rng.normal(size=2),
}


def manifest(weights_bytes, **over):
    m = {
        "format_version": 1,
        "architecture": "alexnet-small",
        "config": TINY_CONFIG,
        "labels": ["a", "b"],
        "input": {"height": 8, "width": 8, "channels": 3, "layout": "NHWC", "resize": "stretch",
                  "scale": 0.003921569, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "output": "logits",
        "weights": {"dtype": "f32", "sha256": hashlib.sha256(weights_bytes).hexdigest()},
    }
    m.update(over)
    return json.dumps(m, indent=1).encode()


def targz(entries):
    """A gzip'd tar of (name, bytes) entries; bytes None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def tiny_onnx(opset=14):
    """Conv(3->4, 3x3, pad 1) + BatchNorm + HardSwish (ReLU before opset 14), a depthwise Conv + Relu6 (Clip), a
    squeeze-excitation Mul, GlobalAveragePool, Flatten, Gemm to 2 classes, on a 1x3x8x8 input."""
    r = np.random.default_rng(2)
    init = {
        "w1": r.normal(size=(4, 3, 3, 3)), "b1": r.normal(size=4),
        "g": np.ones(4), "beta": np.zeros(4), "mean": r.normal(size=4) * 0.1, "var": np.ones(4),
        "wd": r.normal(size=(4, 1, 3, 3)), "lo": np.array(0.0), "hi": np.array(6.0),
        "wf": r.normal(size=(2, 4)), "bf": r.normal(size=2),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], epsilon=1e-5),
        helper.make_node("HardSwish" if opset >= 14 else "Relu", ["n1"], ["h1"]),
        helper.make_node("Conv", ["h1", "wd"], ["d1"], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["d1", "lo", "hi"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["s1"]),
        helper.make_node("HardSigmoid", ["s1"], ["s2"], alpha=1 / 6),
        helper.make_node("Mul", ["r1", "s2"], ["m1"]),
        helper.make_node("GlobalAveragePool", ["m1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


TRITON_CONFIG = b"""name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def encode(path, size, fmt, mode="RGB", **options):
    """The photo at `path` resized to `size` x `size`, in `mode`, encoded as `fmt`."""
    image = Image.open(path).convert("RGB").resize((size, size)).convert(mode)
    if mode == "RGBA":
        image.putalpha(128)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png(path, size):
    return encode(path, size, "PNG")


def main():
    weights = safetensors(TINY_WEIGHTS)
    good = manifest(weights)

    # manifest: the tiny one, the shipped ones, and near-misses.
    write("manifest", "tiny.json", good)
    for name in ["cifar", "sign-language", "efficientnet-lite0"]:
        with tarfile.open(os.path.join(REPO, "models/repository", name + ".tar.gz")) as t:
            write("manifest", name + ".json", t.extractfile("manifest.json").read())
    write("manifest", "labels-short.json", manifest(weights, labels=["a"]))
    write("manifest", "version-2.json", manifest(weights, format_version=2))

    # safetensors: the tiny weights, a wrong shape, a short file.
    write("safetensors", "tiny.safetensors", weights)
    bad = dict(TINY_WEIGHTS, **{"fc2.weight": np.zeros((3, 4))})
    write("safetensors", "wrong-shape.safetensors", safetensors(bad))
    write("safetensors", "truncated.safetensors", weights[: len(weights) // 2])

    # artifact: the tiny model, a Triton directory, and hostile layouts.
    write("artifact", "tiny.tar.gz", targz([("manifest.json", good), ("model.safetensors", weights)]))
    write("artifact", "dot-slash.tar.gz", targz([("./", None), ("./manifest.json", good), ("./model.safetensors", weights)]))
    model = tiny_onnx()
    write("artifact", "triton.tar.gz", targz([
        ("tiny/", None), ("tiny/config.pbtxt", TRITON_CONFIG), ("tiny/1/", None), ("tiny/1/model.onnx", model)]))
    write("artifact", "traversal.tar.gz", targz([("../manifest.json", good), ("model.safetensors", weights)]))
    write("artifact", "checksum.tar.gz", targz([("manifest.json", manifest(weights[:-4] + b"\0\0\0\0")), ("model.safetensors", weights)]))

    # onnx: the tiny graph at three opsets, and cut short.
    for opset in (11, 14, 17):
        write("onnx", f"tiny-opset{opset}.onnx", tiny_onnx(opset))
    write("onnx", "truncated.onnx", model[: len(model) * 2 // 3])

    # image: small PNG and JPEG photos, grey and with alpha.
    cat = os.path.join(REPO, "models/samples/imagenet/cat.png")
    write("image", "cat-32.png", png(cat, 32))
    write("image", "cat-24.jpg", encode(cat, 24, "JPEG", quality=80))
    write("image", "cat-16-grey.png", encode(cat, 16, "PNG", mode="L"))
    write("image", "cat-16-alpha.png", encode(cat, 16, "PNG", mode="RGBA"))
    write("image", "cat-16-progressive.jpg", encode(cat, 16, "JPEG", progressive=True))
    write("image", "cat-16-grey.jpg", encode(cat, 16, "JPEG", mode="L"))

    # tf_serving_json: the request shapes the seeds' clients send, against the CIFAR model.
    pixels = (np.random.default_rng(3).random((32, 32, 3)) * 0.999).round(3).tolist()
    small_png = base64.b64encode(png(cat, 32)).decode()
    write("tf_serving_json", "instances-floats.json", json.dumps({"instances": [pixels]}).encode())
    write("tf_serving_json", "instances-b64.json", json.dumps({"instances": [{"b64": small_png}, {"image": {"b64": small_png}}]}).encode())
    write("tf_serving_json", "inputs-b64.json", json.dumps({"inputs": {"image": [{"b64": small_png}]}, "signature_name": "serving_default"}).encode())
    write("tf_serving_json", "inputs-batch.json", json.dumps({"inputs": [pixels, pixels]}).encode())
    write("tf_serving_json", "both-keys.json", b'{"instances": [], "inputs": []}')

    # frame: header (format, flags, width, height as u16, three strides as u16, roi) + planes.
    def frame(fmt, flags, w, h, strides, roi, planes):
        head = struct.pack("<BBHH3H", fmt, flags, w, h, *strides)
        if flags & 1:
            head += bytes(roi)
        return head + b"".join(planes)

    r = np.random.default_rng(4)
    def noise(n):
        return r.integers(0, 256, n, dtype=np.uint8).tobytes()
    w, h = 16, 12
    write("frame", "rgb24.bin", frame(0, 0, w, h, (w * 3, 0, 0), None, [noise(w * h * 3)]))
    write("frame", "bgra-roi.bin", frame(3, 1 | 4, w, h, (w * 4 + 8, 0, 0), (2, 2, 8, 6), [noise((w * 4 + 8) * h)]))
    write("frame", "gray-letterbox.bin", frame(4, 8, w, h, (w, 0, 0), None, [noise(w * h)]))
    # The harness splits the planes as a 4:2:0 frame lays them out (Y 2/3, U and V 1/6 each).
    write("frame", "nv12.bin", frame(5, 2, w, h, (w, w, 0), None, [noise(w * h * 3 // 2)]))
    write("frame", "i420.bin", frame(7, 0, w, h, (w, w // 2, w // 2), None, [noise(w * h * 3 // 2)]))
    write("frame", "yuyv-odd.bin", frame(8, 1, 15, 9, (32, 0, 0), (1, 1, 13, 7), [noise(32 * 9)]))


if __name__ == "__main__":
    main()
