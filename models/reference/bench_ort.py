#!/usr/bin/env python3
"""ONNX Runtime's side of the edgemm comparison (issue #8).

For each model the Rust bench (`runtime/benches/models.rs`) left in WORK (NAME.safetensors,
NAME.json with architecture/config/size, NAME.check.safetensors with an input and edgemm's
logits), this script builds an ONNX graph from the same weights with onnx.helper (no torch),
checks that ONNX Runtime computes the same logits (max relative error <= 1e-4, the golden
tests' measure), then times batch 1 and batch 8 on the CPU provider with THREADS intra-op
threads: warm (after WARMUP_MS of untimed runs, default 500, at least one), median of RUNS.
Prints one JSON line per measurement, with every run's time.
With --reuse it only times, on the graphs an earlier invocation built and checked: the
benchmark script alternates the two runtimes over several rounds.

    python models/reference/bench_ort.py --work target/bench-ort --threads 2 --runs 20
"""

import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        # f16 weights (the bench's --dtype f16) become the f32 values they stand for: ORT
        # computes in f32 on exactly the weights edgemm multiplies.
        stored = {"F32": "<f4", "F16": "<f2"}[info["dtype"]]
        start, end = info["data_offsets"]
        values = np.frombuffer(data[start:end], dtype=stored).reshape(info["shape"])
        out[name] = values.astype(np.float32)
    return out


class Graph:
    """A tiny builder: nodes appended in order, weights as initializers."""

    def __init__(self, weights):
        self.weights = weights
        self.nodes = []
        self.inits = []
        self.count = 0

    def const(self, name):
        self.inits.append(numpy_helper.from_array(self.weights[name], name))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(self, x, prefix, stride=1, pads=(0, 0, 0, 0), group=1, bias=True):
        inputs = [x, self.const(prefix + ".weight")]
        if bias:
            inputs.append(self.const(prefix + ".bias"))
        return self.node("Conv", inputs, strides=[stride, stride], pads=list(pads), group=group)

    def bn(self, x, prefix, eps):
        names = [self.const(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", [x] + names, epsilon=eps)

    def linear(self, x, prefix):
        return self.node("Gemm", [x, self.const(prefix + ".weight"), self.const(prefix + ".bias")], transB=1)

    def relu6(self, x):
        if "relu6_min" not in [i.name for i in self.inits]:
            self.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
            self.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))
        return self.node("Clip", [x, "relu6_min", "relu6_max"])

    def model(self, out, height, width):
        graph = helper.make_graph(
            self.nodes,
            "edgemm",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None])],
            self.inits,
        )
        # IR version 9 (ONNX 1.15) keeps the file loadable by older ONNX Runtime releases too.
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        onnx.checker.check_model(m)
        return m


def alexnet_small(g, config):
    eps = config.get("bn_eps", 1e-5)
    bn = config.get("batch_norm", True)
    x = "input"
    for k in (1, 2, 3):
        x = g.conv(x, f"conv{k}", pads=(1, 1, 1, 1))
        if bn:
            x = g.bn(x, f"bn{k}", eps)
        x = g.node("Relu", [x])
        x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], axis=1)
    x = g.node("Relu", [g.linear(x, "fc1")])
    return g.linear(x, "fc2")


def vgg16(g, config):
    layout = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    x, index = "input", 0
    for layer in layout:
        if layer == "M":
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            index += 1
        else:
            x = g.node("Relu", [g.conv(x, f"features.{index}", pads=(1, 1, 1, 1))])
            index += 2
    x = g.node("Flatten", [x], axis=1)
    x = g.node("Relu", [g.linear(x, "classifier.0")])
    x = g.node("Relu", [g.linear(x, "classifier.3")])
    return g.linear(x, "classifier.6")


def same_pads(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def efficientnet_lite0(g, config, size):
    stages = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
    eps = 1e-3

    def conv_same(x, prefix, size, kernel, stride, group=1):
        before, after, out = same_pads(size, kernel, stride)
        y = g.conv(x, prefix, stride=stride, pads=(before, before, after, after), group=group, bias=False)
        return y, out

    x, s = conv_same("input", "_conv_stem", size, 3, 2)
    x = g.relu6(g.bn(x, "_bn0", eps))
    b = 0
    for repeats, k, stride, expand, c_in, c_out in stages:
        for r in range(repeats):
            st, ci = (stride, c_in) if r == 0 else (1, c_out)
            p = f"_blocks.{b}"
            y = x
            if expand != 1:
                y = g.relu6(g.bn(g.conv(y, p + "._expand_conv", bias=False), p + "._bn0", eps))
            y, s_out = conv_same(y, p + "._depthwise_conv", s, k, st, group=ci * expand)
            y = g.relu6(g.bn(y, p + "._bn1", eps))
            y = g.bn(g.conv(y, p + "._project_conv", bias=False), p + "._bn2", eps)
            if st == 1 and ci == c_out:
                y = g.node("Add", [y, x])
            x, s, b = y, s_out, b + 1
    x = g.relu6(g.bn(g.conv(x, "_conv_head", bias=False), "_bn1", eps))
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    return g.linear(x, "_fc")


def build(meta, weights):
    g = Graph(weights)
    arch, config = meta["architecture"], meta["config"]
    if arch == "alexnet-small":
        out = alexnet_small(g, config)
    elif arch == "vgg16":
        out = vgg16(g, config)
    elif arch == "efficientnet-lite0":
        assert meta["height"] == meta["width"]
        out = efficientnet_lite0(g, config, meta["height"])
    else:
        raise SystemExit(f"no ONNX builder for {arch}")
    return g.model(out, meta["height"], meta["width"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=os.path.join("target", "bench-ort"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup-ms", type=float, default=500.0,
                   help="untimed runs for this long before the timed ones (at least one), "
                        "as the Rust bench's --warmup-ms")
    p.add_argument("--reuse", action="store_true",
                   help="time only, with the graphs and checks an earlier invocation made")
    p.add_argument("--models", help="comma-separated names, as the Rust bench's (default: all "
                                    "that WORK holds)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    args = p.parse_args()
    names = sorted(f[: -len(".json")] for f in os.listdir(args.work) if f.endswith(".json"))
    if args.models:
        names = [n for n in names if n in args.models.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    failures = 0
    for name in names:
        meta = json.load(open(os.path.join(args.work, name + ".json")))
        path = os.path.join(args.work, name + ".onnx")
        if not args.reuse:
            model = build(meta, read_safetensors(os.path.join(args.work, name + ".safetensors")))
            onnx.save(model, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        if not args.reuse:
            check = read_safetensors(os.path.join(args.work, name + ".check.safetensors"))
            got = sess.run(None, {"input": check["input"]})[0].astype(np.float64)
            want = check["logits"].astype(np.float64)
            scale = np.maximum(1.0, np.abs(want).max(axis=1))
            err = float((np.abs(got - want).max(axis=1) / scale).max())
            if err > 1e-4:
                failures += 1
            print(json.dumps({"runtime": "check", "model": name, "max_relative_error": err}),
                  flush=True)
        h, w = meta["height"], meta["width"]
        for batch in batches:
            x = np.zeros((batch, 3, h, w), np.float32)
            warm = time.perf_counter()
            sess.run(None, {"input": x})
            while (time.perf_counter() - warm) * 1e3 < args.warmup_ms:
                sess.run(None, {"input": x})
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                sess.run(None, {"input": x})
                times.append((time.perf_counter() - t) * 1e3)
            print(json.dumps({"runtime": "onnxruntime", "model": name, "batch": batch,
                              "median_ms": sorted(times)[len(times) // 2], "runs": args.runs,
                              "warmup_ms": args.warmup_ms,
                              "times_ms": times}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
