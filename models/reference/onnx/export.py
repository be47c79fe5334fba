#!/usr/bin/env python3
"""Export real torchvision models to ONNX with torch.onnx.export, for edgemm's ONNX import tests.

The models are torchvision's own classes (mobilenet_v3_large, mobilenet_v3_small, resnet50,
and small variants of them) with seeded random weights, exported by the real exporter, so the
importer sees exactly the graphs that torch emits for these architectures. ONNX Runtime's
outputs on these files (reference.py, next to this script) are the expected values.

Install (from the repository root; --no-deps because requirements.txt is the whole closure,
without triton, which torch.onnx does not need):

    python3 -m venv target/onnx-venv
    target/onnx-venv/bin/pip install --no-deps -r models/reference/onnx/requirements.txt

Run:

    # small models, committed into the repository (each file < 4 MB)
    target/onnx-venv/bin/python models/reference/onnx/export.py --set small --out models/tests/onnx
    # full-size models (not committed: 10-100 MB each)
    target/onnx-venv/bin/python models/reference/onnx/export.py --set full --out target/onnx-models
    # then the expected logits (reference.py) for each directory
    target/onnx-venv/bin/python models/reference/onnx/reference.py --models models/tests/onnx

(about 7 s and 9 s on 2 cores). --only NAME... exports a subset; --verbose lists the shapes of
constant inputs in the inventory.

Weights. torch.manual_seed(SEED) right before each model's constructor gives torchvision's
default initialisation (conv: kaiming normal, fan_out). Then, with a torch.Generator seeded
SEED + 1, in module order:
  - every Conv2d/Linear bias (torchvision leaves them 0, or has none) ~ N(0, 0.1);
  - every Linear weight ~ N(0, 1/fan_in) (torchvision's N(0, 0.01) makes logits vanish);
  - every BatchNorm2d gets weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), and running statistics
    calibrated on the calibration batch, layer after layer in forward order: with mu, var
    the per-channel mean and variance of that BN's actual input, running_mean =
    mu + N(0, 0.1) * sqrt(var) and running_var = max(var, 0.01 * mean(var)) * U(0.5, 1.5).
    Without the calibration ResNet50 logits explode (std ~250, softmax one-hot) and
    MobileNetV3's vanish (std ~0.005); with it every BN output has std ~1, as in a
    trained network.
  - finally the last Linear layer's weight is scaled so that the logits on the calibration
    batch have standard deviation LOGIT_STD (2.0) (bias excluded from that measure).
The calibration batch is the five sample photos exactly as reference.py feeds them
(reference.photo_batch: PIL bilinear resize to 224x224, ImageNet normalisation): with
seeded noise instead, the photos' logits came out 2-5x larger and softmax-saturated.
The values depend on torch's RNG and init code: use the pinned versions.

Export: torch.onnx.export(..., dynamo=False) (the TorchScript exporter), opset 13 unless the
file name says otherwise, input "input" [batch, 3, 224, 224], output "logits"
[batch, classes], dynamic batch axis "batch", do_constant_folding=True. By default with
training=TrainingMode.PRESERVE on the eval-mode model: the exporter then skips its
eval-mode Conv+BatchNorm fusion, so the files keep BatchNormalization nodes and the
importer has to fold them itself. Files whose name ends in _bnfused use the exporter's
default (TrainingMode.EVAL), where torch folds BN into the Conv weights itself.

For each file the script checks the model (onnx.checker, full_check), runs it on ORT against
torch (max |diff| / max |torch| <= 1e-4) and prints the size, the logits' std and largest
softmax probability on the calibration batch, and an inventory of the op types and
attribute values used.
"""

import argparse
import math
import os
import sys
import warnings
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper
import torch
import torchvision
from torchvision.models import resnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import photo_batch  # noqa: E402  (the photos the reference logits use)

SEED = 20261121
LOGIT_STD = 2.0
INPUT_SHAPE = (1, 3, 224, 224)


class SlimResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's `planes` divided by width_div.

    The only change: _make_layer gets planes // width_div (stem stays 64 channels), and fc
    is rebuilt for the narrower last stage. Blocks (BasicBlock/Bottleneck), downsample
    shortcuts, forward() are torchvision's own.
    """

    def __init__(self, block, layers, width_div=4, num_classes=10, **kwargs):
        self._width_div = width_div
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.fc = torch.nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, *args, **kwargs):
        return super()._make_layer(block, planes // self._width_div, *args, **kwargs)


def mnv3_small_w050():
    return torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.5, num_classes=10)


# name -> (constructor, opset, fuse BN in the exporter)
FULL = {
    "mobilenet_v3_large": (lambda: torchvision.models.mobilenet_v3_large(weights=None), 13, False),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(weights=None), 13, False),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 13, False),
}
SMALL = {
    "mobilenet_v3_small_w050_c10": (mnv3_small_w050, 13, False),
    "mobilenet_v3_small_w050_c10_opset11": (mnv3_small_w050, 11, False),
    "mobilenet_v3_small_w050_c10_opset17": (mnv3_small_w050, 17, False),
    "mobilenet_v3_small_w050_c10_bnfused": (mnv3_small_w050, 13, True),
    "mobilenet_v3_large_w035_c10": (
        lambda: torchvision.models.mobilenet_v3_large(weights=None, width_mult=0.35, num_classes=10),
        13,
        False,
    ),
    "resnet_bottleneck_tiny_c10": (lambda: SlimResNet(resnet.Bottleneck, [1, 1, 1, 1], width_div=4), 13, False),
    "resnet_basic_tiny_c10": (lambda: SlimResNet(resnet.BasicBlock, [1, 1, 1, 1], width_div=8), 13, False),
}


def build(ctor, seed):
    """Seeded torchvision model with randomised biases/BN and calibrated statistics, eval()."""
    torch.manual_seed(seed)
    model = ctor()
    g = torch.Generator().manual_seed(seed + 1)
    linears = []
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod.bias is not None:
            mod.bias.data.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
        if isinstance(mod, torch.nn.Linear):
            mod.weight.data.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.in_features))
            linears.append(mod)

    def calibrate(mod, inputs):
        x = inputs[0].detach().double()
        mu = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        var = torch.clamp(var, min=1e-2 * float(var.mean()) + 1e-12)
        c = mod.num_features
        z = torch.randn(c, generator=g, dtype=torch.float64)
        u = torch.rand(c, generator=g, dtype=torch.float64)
        mod.running_mean.copy_((mu + 0.1 * z * var.sqrt()).float())
        mod.running_var.copy_((var * (0.5 + u)).float())
        mod.weight.data.copy_(0.5 + torch.rand(c, generator=g))
        mod.bias.data.copy_(torch.randn(c, generator=g) * 0.1)

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
    model.eval()
    calib = torch.from_numpy(photo_batch()[2])
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    last = linears[-1]
    with torch.no_grad():
        s = float((model(calib) - last.bias).std())
        last.weight.mul_(LOGIT_STD / s)
        logits = model(calib)
    return model, calib, logits


def export(model, path, opset, fuse_bn):
    x = torch.zeros(INPUT_SHAPE)
    training = torch.onnx.TrainingMode.EVAL if fuse_bn else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            training=training,
        )


def _attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return tuple(round(t, 7) if isinstance(t, float) else t for t in v)
    if isinstance(v, float):
        return round(v, 7)
    if isinstance(v, onnx.TensorProto):
        arr = numpy_helper.to_array(v)
        return f"tensor{list(arr.shape)}" + (f"={arr.item()!r}" if arr.size == 1 else "")
    return v


def inventory(model, verbose=False):
    """Lines describing op types, attribute values and which inputs are constants."""
    g = model.graph
    consts = {}
    for init in g.initializer:
        consts[init.name] = numpy_helper.to_array(init)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    count = defaultdict(int)
    attrs = defaultdict(lambda: defaultdict(set))
    ins = defaultdict(set)
    for n in g.node:
        op = n.op_type
        count[op] += 1
        for a in n.attribute:
            attrs[op][a.name].add(repr(_attr_value(a)))
        sig = []
        for name in n.input:
            if name == "":
                sig.append("-")
            elif name in consts:
                arr = consts[name]
                if arr.size == 1:
                    sig.append(f"C{list(arr.shape)}={arr.reshape(-1)[0].item()!r}")
                else:
                    sig.append(f"C{list(arr.shape)}" if verbose else f"C{arr.ndim}d")
            else:
                sig.append("x")
        ins[op].add("(" + ", ".join(sig) + ")")
    lines = []
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
    lines.append(f"  ir_version {model.ir_version}, opset {opsets}, producer {model.producer_name} {model.producer_version}")

    def shape(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    lines.append(
        f"  inputs {[(i.name, shape(i)) for i in g.input]}, outputs {[(o.name, shape(o)) for o in g.output]}, "
        f"{len(g.node)} nodes, {len(g.initializer)} initializers "
        f"({sorted({onnx.TensorProto.DataType.Name(i.data_type) for i in g.initializer})})"
    )
    lines.append(f"  op types: {sorted(count)}")
    lines.append("  (inputs: x = computed, C<r>d = constant of rank r, C[shape]=v = one-element constant)")
    for op in sorted(count):
        lines.append(f"  {op} x{count[op]}: inputs {sorted(ins[op])}")
        for an in sorted(attrs[op]):
            lines.append(f"      {an}: {sorted(attrs[op][an])}")
    return lines


def check_ort(path, x, expected):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input": x.numpy()})
    rel = float(np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max())
    return rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=["small", "full"], required=True)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--only", nargs="*", help="export only these names")
    ap.add_argument("--verbose", action="store_true", help="inventory lists constant input shapes")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, seed {args.seed}")
    table = SMALL if args.set == "small" else FULL
    ok = True
    for name, (ctor, opset, fuse_bn) in table.items():
        if args.only and name not in args.only:
            continue
        model, calib, logits = build(ctor, args.seed)
        path = os.path.join(args.out, name + ".onnx")
        export(model, path, opset, fuse_bn)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        n_params = sum(p.numel() for p in model.parameters())
        prob = torch.softmax(logits, 1)
        rel = check_ort(path, calib, logits)
        size = os.path.getsize(path)
        print(
            f"\n{name}.onnx: {size} bytes ({size / 2**20:.2f} MiB), {n_params} parameters, opset {opset}, "
            f"BN {'fused by exporter' if fuse_bn else 'kept'}; calibration batch: logits std "
            f"{float(logits.std()):.3f}, max softmax {float(prob.max()):.3f}; ORT vs torch rel {rel:.2e}"
        )
        for line in inventory(m, args.verbose):
            print(line)
        if rel > 1e-4:
            print(f"  ERROR: ORT differs from torch by {rel:.2e}")
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
