#!/usr/bin/env python3
"""Independent numpy reference for the CNN architectures; writes golden test files.

Why this exists: the Rust runtime and model code must be checked against something that
shares none of its code. This script re-implements the three architectures from their
written specification in plain numpy (float64 throughout), generates random weights with
a tiny, bit-exact generator that the Rust tests re-implement, and stores one input batch
and the resulting logits per model as safetensors files.

Usage (from the repository root):
    python models/reference/golden.py [--data ../shared/data] [--out models/tests/golden]

Outputs: alexnet_small.safetensors, vgg16.safetensors, efficientnet_lite0.safetensors in
--out, and models/reference/imagenet_reference.txt (top-3 per reference photo) next to
this script. Only numpy and the standard library are used.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bmp_to_png import read_bmp  # noqa: E402
from jpeg_baseline import decode_jpeg  # noqa: E402

SEED = 20261121
GENERATOR = "models/reference/golden.py"

ALEXNET_CONFIG = {
    "input_size": 32,
    "channels": [64, 128, 256],
    "hidden": 512,
    "classes": 10,
    "batch_norm": True,
    "bn_eps": 1e-5,
}
VGG16_CONFIG = {"input_height": 64, "input_width": 64, "hidden": 4096, "classes": 10}
EFFICIENTNET_CONFIG = {"classes": 1000}

# (repeats, kernel, stride, expand, in, out) from the EfficientNet-Lite0 definition.
EFFICIENTNET_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
EFFICIENTNET_BN_EPS = 1e-3

PHOTOS = ["grace_hopper.bmp", "cat.bmp", "hot_dog.jpg", "bird.bmp", "dragonfly.bmp"]
EXPECTED_TOP1 = {
    "grace_hopper.bmp": "military uniform",
    "cat.bmp": "Egyptian cat",
    "hot_dog.jpg": "hotdog",
    "bird.bmp": "chickadee",
    "dragonfly.bmp": "dragonfly",
}


# ---------------------------------------------------------------------------------------
# Deterministic weight generator (mirrored bit for bit by the Rust tests)
# ---------------------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def fnv1a64(name):
    """FNV-1a so that each tensor's stream depends on its name only, not on creation order."""
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform01(seed, name, n):
    """u_i = (mix(seed_t + (i+1) * golden_gamma) >> 11) * 2^-53 for i in 0..n (SplitMix64).

    Counter-based (no state carried between elements), so Rust can reproduce any element
    independently and a vectorised numpy version is trivially bit-exact.
    """
    seed_t = np.uint64((seed ^ fnv1a64(name)) & MASK64)
    with np.errstate(over="ignore"):
        z = seed_t + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    # v >> 11 has at most 53 bits, so the float64 conversion is exact.
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def generate(seed, name, shape, role):
    """Deterministic tensor; computed in float64, rounded once to float32.

    The forward pass uses the float32-rounded values so that a float32 implementation
    sees exactly the same weights.
    """
    n = int(np.prod(shape))
    u = uniform01(seed, name, n)
    if role == "weight":
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * u - 1.0) * math.sqrt(6.0 / fan_in)
    elif role in ("bias", "bn_bias", "bn_mean"):
        v = (2.0 * u - 1.0) * 0.1
    elif role == "bn_weight":
        v = 1.0 + (2.0 * u - 1.0) * 0.1
    elif role == "bn_var":
        v = 0.5 + u
    elif role == "input":
        v = u
    else:
        raise ValueError(f"unknown role {role}")
    return v.astype(np.float32).reshape(shape)


def check_values(t):
    """Cross-check numbers for the Rust generator: first three values and their sum.

    The sum is math.fsum (exactly rounded), so it does not depend on summation order.
    """
    flat = t.astype(np.float64).ravel()
    return [float(x) for x in flat[:3]], math.fsum(flat.tolist())


# ---------------------------------------------------------------------------------------
# safetensors I/O (hand-written: the format is 8 bytes + JSON + raw little-endian data)
# ---------------------------------------------------------------------------------------


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: only F32 supported, got {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = arr.reshape(info["shape"]).astype(np.float32)
    return tensors, header.get("__metadata__", {})


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, float32 array) in storage order; metadata: str -> str."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors:
        blob = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # keeps the data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------------------------------
# Layers (NCHW, float64)
# ---------------------------------------------------------------------------------------


def pad_nchw(x, top, bottom, left, right):
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv2d(x, w, b=None, stride=1, pads=(0, 0, 0, 0)):
    """Dense convolution via im2col + one matmul; pads = (top, bottom, left, right).

    Explicit four-sided padding lets the same code express both PyTorch's symmetric
    padding and TensorFlow's asymmetric SAME padding.
    """
    n, c, _, _ = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c, (w.shape, x.shape)
    xp = pad_nchw(x, *pads)
    hp, wp = xp.shape[2], xp.shape[3]
    oh = (hp - kh) // stride + 1
    ow = (wp - kw) // stride + 1
    if kh == 1 and kw == 1:
        cols = xp[:, :, : (oh - 1) * stride + 1 : stride, : (ow - 1) * stride + 1 : stride]
        cols = cols.reshape(n, c, oh * ow)
    else:
        cols = np.empty((n, c, kh, kw, oh, ow), dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xp[
                    :, :, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride
                ]
        cols = cols.reshape(n, c * kh * kw, oh * ow)
    out = np.matmul(w.reshape(o, -1).astype(np.float64), cols).reshape(n, o, oh, ow)
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out


def depthwise_conv2d(x, w, stride=1, pads=(0, 0, 0, 0)):
    """Depthwise (groups = channels) convolution as a sum of k*k shifted, strided slices."""
    n, c, _, _ = x.shape
    assert w.shape[0] == c and w.shape[1] == 1, (w.shape, x.shape)
    kh, kw = w.shape[2], w.shape[3]
    xp = pad_nchw(x, *pads)
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    w = w.astype(np.float64)
    out = np.zeros((n, c, oh, ow), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            sl = xp[:, :, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
            out += sl * w[None, :, 0, i, j, None, None]
    return out


def batch_norm(x, weight, bias, mean, var, eps):
    """Inference-mode batch norm with running statistics, in the textbook form."""
    f = lambda t: t.astype(np.float64)[None, :, None, None]  # noqa: E731
    return (x - f(mean)) / np.sqrt(f(var) + eps) * f(weight) + f(bias)


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


def max_pool2x2(x):
    n, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def linear(x, w, b):
    return x @ w.astype(np.float64).T + b.astype(np.float64)


def nhwc_to_nchw(x):
    return np.ascontiguousarray(x.astype(np.float64).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------
# AlexNet-small
# ---------------------------------------------------------------------------------------


def alexnet_small_params(cfg, seed):
    """Name -> (shape, role); generation order is irrelevant because seeds hash the name."""
    specs = {}
    prev = 3
    for k, ch in enumerate(cfg["channels"], start=1):
        specs[f"conv{k}.weight"] = ([ch, prev, 3, 3], "weight")
        specs[f"conv{k}.bias"] = ([ch], "bias")
        specs[f"bn{k}.weight"] = ([ch], "bn_weight")
        specs[f"bn{k}.bias"] = ([ch], "bn_bias")
        specs[f"bn{k}.running_mean"] = ([ch], "bn_mean")
        specs[f"bn{k}.running_var"] = ([ch], "bn_var")
        prev = ch
    side = cfg["input_size"] // 2 ** len(cfg["channels"])
    specs["fc1.weight"] = ([cfg["hidden"], prev * side * side], "weight")
    specs["fc1.bias"] = ([cfg["hidden"]], "bias")
    specs["fc2.weight"] = ([cfg["classes"], cfg["hidden"]], "weight")
    specs["fc2.bias"] = ([cfg["classes"]], "bias")
    return {name: generate(seed, name, shape, role) for name, (shape, role) in specs.items()}


def alexnet_small_forward(p, cfg, x_nhwc):
    x = nhwc_to_nchw(x_nhwc)
    for k in range(1, len(cfg["channels"]) + 1):
        x = conv2d(x, p[f"conv{k}.weight"], p[f"conv{k}.bias"], 1, (1, 1, 1, 1))
        if cfg["batch_norm"]:
            x = batch_norm(
                x,
                p[f"bn{k}.weight"],
                p[f"bn{k}.bias"],
                p[f"bn{k}.running_mean"],
                p[f"bn{k}.running_var"],
                cfg["bn_eps"],
            )
        x = max_pool2x2(relu(x))
    x = x.reshape(x.shape[0], -1)  # (C, H, W) order
    x = relu(linear(x, p["fc1.weight"], p["fc1.bias"]))
    return linear(x, p["fc2.weight"], p["fc2.bias"])


# ---------------------------------------------------------------------------------------
# VGG16 (torchvision layer indices, no adaptive pooling)
# ---------------------------------------------------------------------------------------

VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_conv_indices():
    """torchvision index of each conv in `features` (each conv is followed by a ReLU)."""
    idx, out = 0, []
    for item in VGG16_LAYOUT:
        if item == "M":
            idx += 1
        else:
            out.append((idx, item))
            idx += 2
    return out


def vgg16_params(cfg, seed):
    specs = {}
    prev = 3
    for idx, ch in vgg16_conv_indices():
        specs[f"features.{idx}.weight"] = ([ch, prev, 3, 3], "weight")
        specs[f"features.{idx}.bias"] = ([ch], "bias")
        prev = ch
    flat = prev * (cfg["input_height"] // 32) * (cfg["input_width"] // 32)
    hidden = cfg["hidden"]
    for idx, (o, i) in zip((0, 3, 6), ((hidden, flat), (hidden, hidden), (cfg["classes"], hidden))):
        specs[f"classifier.{idx}.weight"] = ([o, i], "weight")
        specs[f"classifier.{idx}.bias"] = ([o], "bias")
    return {name: generate(seed, name, shape, role) for name, (shape, role) in specs.items()}


def vgg16_forward(p, cfg, x_nhwc):
    x = nhwc_to_nchw(x_nhwc)
    idx = 0
    for item in VGG16_LAYOUT:
        if item == "M":
            x = max_pool2x2(x)
            idx += 1
        else:
            x = relu(conv2d(x, p[f"features.{idx}.weight"], p[f"features.{idx}.bias"], 1, (1, 1, 1, 1)))
            idx += 2
    x = x.reshape(x.shape[0], -1)
    x = relu(linear(x, p["classifier.0.weight"], p["classifier.0.bias"]))
    x = relu(linear(x, p["classifier.3.weight"], p["classifier.3.bias"]))
    return linear(x, p["classifier.6.weight"], p["classifier.6.bias"])


# ---------------------------------------------------------------------------------------
# EfficientNet-Lite0 (real weights)
# ---------------------------------------------------------------------------------------


def conv_pads(size_h, size_w, k, stride, padding):
    """(top, bottom, left, right) padding.

    "same" is TensorFlow SAME as in efficientnet_pytorch's Conv2dStaticSamePadding: the
    extra row/column for stride 2 goes at the bottom/right. "symmetric" is PyTorch's
    padding=k//2 on every side.
    """
    if padding == "symmetric":
        return (k // 2,) * 4

    def one(size):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return total // 2, total - total // 2

    (t, b), (l, r) = one(size_h), one(size_w)
    return t, b, l, r


def efficientnet_block_list():
    """Flattened per-block (kernel, stride, expand, in, out) in _blocks.N order."""
    blocks = []
    for repeats, k, s, e, cin, cout in EFFICIENTNET_BLOCKS:
        for r in range(repeats):
            blocks.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return blocks


def efficientnet_lite0_forward(p, x_nhwc, padding="same"):
    eps = EFFICIENTNET_BN_EPS

    def bn(x, prefix):
        return batch_norm(
            x, p[prefix + ".weight"], p[prefix + ".bias"], p[prefix + ".running_mean"], p[prefix + ".running_var"], eps
        )

    def conv(x, name, stride):
        w = p[name]
        return conv2d(x, w, None, stride, conv_pads(x.shape[2], x.shape[3], w.shape[2], stride, padding))

    x = nhwc_to_nchw(x_nhwc)
    x = relu6(bn(conv(x, "_conv_stem.weight", 2), "_bn0"))
    for i, (k, s, e, cin, cout) in enumerate(efficientnet_block_list()):
        pre = f"_blocks.{i}."
        inp = x
        if e != 1:
            x = relu6(bn(conv(x, pre + "_expand_conv.weight", 1), pre + "_bn0"))
        dw = p[pre + "_depthwise_conv.weight"]
        assert dw.shape[2] == k
        x = depthwise_conv2d(x, dw, s, conv_pads(x.shape[2], x.shape[3], k, s, padding))
        x = relu6(bn(x, pre + "_bn1"))
        x = bn(conv(x, pre + "_project_conv.weight", 1), pre + "_bn2")
        if s == 1 and cin == cout:
            x = x + inp
    x = relu6(bn(conv(x, "_conv_head.weight", 1), "_bn1"))
    x = x.mean(axis=(2, 3))
    return linear(x, p["_fc.weight"], p["_fc.bias"])


# ---------------------------------------------------------------------------------------
# Image preprocessing for the reference photos
# ---------------------------------------------------------------------------------------


def load_rgb(path):
    if path.lower().endswith(".bmp"):
        w, h, rgb = read_bmp(path)
        return np.frombuffer(rgb, dtype=np.uint8).reshape(h, w, 3)
    with open(path, "rb") as f:
        return decode_jpeg(f.read())


def center_crop_square(img):
    """Largest centred square; when the excess is odd the extra pixel is dropped at the end."""
    h, w, _ = img.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top : top + side, left : left + side]


def resize_bilinear(img, out_h, out_w):
    """Bilinear with half-pixel centres, no antialiasing (PyTorch align_corners=False).

    Source coordinate s = (d + 0.5) * in/out - 0.5, clamped below at 0; the upper
    neighbour index is clamped to in-1.
    """

    def axis(n_in, n_out):
        s = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        s = np.maximum(s, 0.0)
        i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    x = img.astype(np.float64)
    y0, y1, wy = axis(x.shape[0], out_h)
    x0, x1, wx = axis(x.shape[1], out_w)
    rows = x[y0] * (1.0 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    return rows[:, x0] * (1.0 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def preprocess_imagenet(path, size=224):
    """Centre crop, bilinear resize, x/255, (x-0.5)/0.5; returned as float32 HWC."""
    x = resize_bilinear(center_crop_square(load_rgb(path)), size, size) / 255.0
    return ((x - 0.5) / 0.5).astype(np.float32)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def random_model_golden(name, arch, cfg, params_fn, forward_fn, input_shape, first_weight, out_dir):
    params = params_fn(cfg, SEED)
    x = generate(SEED, "input", input_shape, "input")
    logits = forward_fn(params, cfg, x).astype(np.float32)
    first3, total = check_values(params[first_weight])
    print(f"{name}: {first_weight} first3 = {first3!r}, sum = {total!r}")
    meta = {
        "architecture": arch,
        "config": compact(cfg),
        "seed": str(SEED),
        "generator": GENERATOR,
        "check_tensor": first_weight,
        "check_first3": "[" + ", ".join(repr(v) for v in first3) + "]",
        "check_sum": repr(total),
    }
    path = os.path.join(out_dir, name + ".safetensors")
    write_safetensors(path, [("input", x), ("logits", logits)], meta)
    print(f"  wrote {path} ({os.path.getsize(path)} bytes); logits[0][:5] = {logits[0][:5].tolist()}")
    return logits


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    repo_root = os.path.normpath(os.path.join(here, "..", ".."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.path.join("..", "shared", "data"), help="data directory")
    parser.add_argument("--out", default=os.path.join("models", "tests", "golden"), help="output directory")
    parser.add_argument(
        "--reference-txt",
        default=os.path.join(repo_root, "models", "reference", "imagenet_reference.txt"),
        help="where to write the ImageNet top-3 summary",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    random_model_golden(
        "alexnet_small", "alexnet-small", ALEXNET_CONFIG, alexnet_small_params, alexnet_small_forward,
        [2, ALEXNET_CONFIG["input_size"], ALEXNET_CONFIG["input_size"], 3], "conv1.weight", args.out,
    )
    random_model_golden(
        "vgg16", "vgg16", VGG16_CONFIG, vgg16_params, vgg16_forward,
        [2, VGG16_CONFIG["input_height"], VGG16_CONFIG["input_width"], 3], "features.0.weight", args.out,
    )

    # EfficientNet-Lite0: real weights, real photos; check both padding conventions.
    weights_path = os.path.join(args.data, "efficientnet-lite0", "efficientnet_lite0.safetensors")
    params, _ = read_safetensors(weights_path)
    with open(weights_path, "rb") as f:
        weights_sha = hashlib.sha256(f.read()).hexdigest()
    samples = os.path.join(args.data, "imagenet-samples")
    with open(os.path.join(samples, "imagenet_labels.txt"), encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f][1:]  # line 1 is "background"
    batch = np.stack([preprocess_imagenet(os.path.join(samples, ph)) for ph in PHOTOS])

    results = {}
    for padding in ("same", "symmetric"):
        probs = softmax(efficientnet_lite0_forward(params, batch, padding))
        results[padding] = probs
        hot = probs[PHOTOS.index("hot_dog.jpg")][[i for i, l in enumerate(labels) if l.startswith("hotdog")][0]]
        print(f"efficientnet-lite0, padding={padding}: hotdog probability {hot:.4f}")
        for ph, pr in zip(PHOTOS, probs):
            top = int(np.argmax(pr))
            ok = labels[top].split(",")[0] == EXPECTED_TOP1[ph]
            print(f"  {ph:17s} top-1 {labels[top]!r} p={pr[top]:.4f} {'OK' if ok else 'MISMATCH'}")
    padding = "same"
    all_ok = all(
        labels[int(np.argmax(pr))].split(",")[0] == EXPECTED_TOP1[ph] for ph, pr in zip(PHOTOS, results[padding])
    )
    if not all_ok:
        sys.exit("TF-SAME padding does not reproduce the reference top-1 labels")

    lines = [
        "EfficientNet-Lite0 reference results (numpy, float64, TF-SAME padding)",
        f"generator: {GENERATOR}; weights sha256 {weights_sha}",
        "preprocessing: centre square crop, bilinear 224x224 (half-pixel centres, no antialias),"
        " RGB, x/255, (x-0.5)/0.5",
        "",
    ]
    for ph, pr in zip(PHOTOS, results[padding]):
        lines.append(ph)
        for k in np.argsort(-pr)[:3]:
            lines.append(f"  {pr[k]:.6f}  {labels[k]}")
    lines.append("")
    lines.append("Symmetric padding (k//2 per side), for comparison, top-1 only:")
    for ph, pr in zip(PHOTOS, results["symmetric"]):
        k = int(np.argmax(pr))
        lines.append(f"  {ph:17s} {pr[k]:.6f}  {labels[k]}")
    with open(args.reference_txt, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"  wrote {args.reference_txt}")

    golden_idx = [PHOTOS.index("grace_hopper.bmp"), PHOTOS.index("hot_dog.jpg")]
    x = batch[golden_idx]
    logits = efficientnet_lite0_forward(params, x, padding).astype(np.float32)
    meta = {
        "architecture": "efficientnet-lite0",
        "config": compact(EFFICIENTNET_CONFIG),
        "generator": GENERATOR,
        "weights": "efficientnet-lite0/efficientnet_lite0.safetensors",
        "weights_sha256": weights_sha,
        "images": "grace_hopper.bmp,hot_dog.jpg",
        "padding": "tf_same",
    }
    path = os.path.join(args.out, "efficientnet_lite0.safetensors")
    write_safetensors(path, [("input", x), ("logits", logits)], meta)
    print(f"  wrote {path} ({os.path.getsize(path)} bytes); logits[0][:5] = {logits[0][:5].tolist()}")


if __name__ == "__main__":
    main()
