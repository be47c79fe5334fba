#!/usr/bin/env python3
"""Export Keras VGG models to ONNX with tf2onnx, for edgemm's ONNX import tests (issue #20).

Two models, both with seeded weights, both converted by the real converter
(tf2onnx.convert.from_function on the Keras model, opset 13), so the importer sees what
Keras + tf2onnx emit: an NHWC input transposed to NCHW by the first node, the Flatten as a
Transpose back to NHWC and a Reshape whose shape is computed from the input's batch
(Shape, Gather, Cast, Slice, Concat), Dense as MatMul + Add, a final Softmax:

  --set small: keras_vgg_tiny_c10.onnx, a VGG-style model from Keras layers
      (Conv2D same-padding + ReLU, MaxPooling2D, Flatten, Dense), five blocks like VGG16's
      with 1, 1, 2, 2, 2 convolutions of 8, 16, 24, 32, 32 filters, fc1/fc2 of 64 units,
      10 classes, softmax; < 1 MB, committed in models/tests/onnx.
  --set full: keras_vgg16.onnx, keras.applications.VGG16(weights=None, classes=1000,
      classifier_activation=None): the real VGG16 answering logits (553 MB, not committed;
      CI writes it into target/onnx-models).

Install (from the repository root) and run:

    python3 -m venv target/keras-venv
    target/keras-venv/bin/pip install --no-deps -r models/reference/onnx/requirements-keras.txt
    target/keras-venv/bin/python models/reference/onnx/export_keras.py --set small --out models/tests/onnx
    target/keras-venv/bin/python models/reference/onnx/export_keras.py --set full --out target/onnx-models

Each run also writes MODEL.expected.json with ONNX Runtime's outputs (reference.py's
format and photos; the file records "layout": "NHWC", the layout ORT is fed).

Weights. keras.utils.set_random_seed(SEED) before the model is built (Keras' default
initialisation: Glorot-uniform kernels, zero biases). A plain VGG has no batch norm, and
with Glorot kernels its activations shrink layer after layer, so the kernels are calibrated
on the five sample photos as reference.py feeds them, layer after layer in forward order:
each Conv2D/Dense kernel is scaled so that its pre-activation output has an RMS of 1 (the
activation is positively homogeneous, so this is measured with a zero bias), then its bias
is drawn ~ N(0, 0.1) from a numpy generator seeded SEED + 1; the last Dense kernel is scaled
so that the logits on the photos have standard deviation LOGIT_STD (2.0, bias excluded),
so that the softmax is not saturated. The values depend on TensorFlow's RNG: use the
pinned versions.

For each file the script checks the model (onnx.checker, full_check), compares ORT to Keras
(max |diff| / max |keras| <= 1e-4) and prints the size, the time taken and the op inventory.
"""

import argparse
import os
import sys
import time
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf2onnx's optimiser rewrites every node's attributes on each pass; with protobuf's default
# (upb) backend each rewrite copies the constant tensors into arenas that are never freed,
# and converting VGG16 (553 MB of weights) was killed at 24 GB resident. The pure-Python
# backend shares the bytes: the full export peaks at 10.9 GB and takes ~1 min.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import tf2onnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402  (the photos the reference outputs use)

SEED = 20261203
LOGIT_STD = 2.0
OPSET = 13
VERBOSE = os.environ.get("EXPORT_KERAS_VERBOSE") == "1"


def tiny_vgg(classes=10):
    """A VGG16-shaped model at a fraction of its width, from Keras layers only."""
    x = inp = keras.Input((224, 224, 3), name="input")
    for block, (convs, filters) in enumerate(zip([1, 1, 2, 2, 2], [8, 16, 24, 32, 32]), 1):
        for k in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"block{block}_conv{k}"
            )(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc2")(x)
    x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inp, x, name="vgg_tiny")


def vgg16():
    return keras.applications.VGG16(weights=None, classes=1000, classifier_activation=None)


def calibrate(model, batch_nhwc):
    """Scale kernels and draw biases layer by layer (see the module docstring)."""
    rng = np.random.default_rng(SEED + 1)
    x = tf.constant(batch_nhwc)
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
    weighted = [l for l in layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    last = weighted[-1]
    for layer in layers:
        if layer is last:
            kernel, bias = layer.get_weights()
            z = x.numpy().reshape(x.shape[0], -1) @ kernel
            kernel = kernel * (LOGIT_STD / z.std())
            bias = rng.normal(0.0, 0.1, bias.shape).astype(np.float32)
            layer.set_weights([kernel.astype(np.float32), bias])
        elif layer in weighted:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, np.zeros_like(bias)])
            y = layer(x).numpy()
            # relu(z) with z symmetric: mean(relu(z)^2) = mean(z^2) / 2
            rms = np.sqrt(2.0 * np.mean(y.astype(np.float64) ** 2))
            bias = rng.normal(0.0, 0.1, bias.shape).astype(np.float32)
            layer.set_weights([(kernel / rms).astype(np.float32), bias])
        x = layer(x)
        if VERBOSE:
            print(f"  {layer.name}: {tuple(x.shape)}", flush=True)


def inline_external(proto, storage):
    """Put the tensors that tf2onnx's large_model mode keeps aside back into the model."""
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in t.external_data}["location"]
            t.raw_data = storage.name_to_tensor_data.pop(location)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT


def export(name, build, out, large_model=False):
    t0 = time.time()
    keras.utils.set_random_seed(SEED)
    model = build()
    _, _, x_nchw = reference.photo_batch()
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    calibrate(model, x)
    want = model.predict(x, verbose=0)
    t1 = time.time()
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
    fn = tf.function(lambda t: model(t, training=False))
    path = os.path.join(out, name + ".onnx")
    # large_model keeps tensors beside the model (a zip); they go back into the one file here
    # (protobuf's limit is 2 GB).
    proto, storage = tf2onnx.convert.from_function(
        fn, input_signature=spec, opset=OPSET, large_model=large_model
    )
    if large_model:
        inline_external(proto, storage)
    # tf2onnx names the output after the tf.function's Identity; the tests read "logits"
    # whatever the model answers (probabilities for a softmax head), as reference.py does.
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = ["logits" if o == old else o for o in node.output]
    proto.graph.output[0].name = "logits"
    onnx.save(proto, path)
    onnx.checker.check_model(path, full_check=True)
    t2 = time.time()
    got = reference.run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= 1e-4, f"{name}: ORT vs Keras rel {rel:e}"
    ops = Counter(n.op_type for n in proto.graph.node)
    print(
        f"{name}: {os.path.getsize(path)} bytes, build+calibrate {t1 - t0:.1f} s, convert "
        f"{t2 - t1:.1f} s; output std {want.std():.3f}, max {want.max():.3f}; ORT vs Keras rel "
        f"{rel:.2e}; ops {dict(sorted(ops.items()))}"
    )
    reference.write_expected(path, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=["small", "full"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}, tf2onnx {tf2onnx.__version__}, "
          f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    if args.set == "small":
        export("keras_vgg_tiny_c10", tiny_vgg, args.out)
    else:
        export("keras_vgg16", vgg16, args.out)


if __name__ == "__main__":
    main()
