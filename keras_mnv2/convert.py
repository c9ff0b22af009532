"""Officially trained MobileNetV2 models into keras_mnv2's builders.

``from_tflite(path)`` reads a MobileNetV2-family ``.tflite`` file (the TF-slim classifiers, Mobile
DeepLabv3, SSDLite up to its ``TFLite_Detection_PostProcess`` op, or a file keras_mnv2 itself
exported) in float32, float16 or uint8/int8, tells what it is (kind, width multiplier, channel
rounding, input size, classes, output stride, ASPP), builds the matching model with
``MobileNetV2`` / ``DeepLabV3`` / ``SSDLite`` and loads the weights, dequantized. The converter
has folded batch norm into the convolutions: the folded kernels go into the convolutions and
each folded bias into the batch norm after it, which is set to the identity plus that bias
(gamma 1, mean 0, variance 1 - epsilon). The model keeps the builders' layers, so it fine-tunes
and exports like any other.

``from_tf_checkpoint(path)`` does the same for TF1 name-based checkpoints (TF-slim
``mobilenet_v2_*``, the TF Object Detection API's ``ssdlite_mobilenet_v2_coco``, DeepLab's
``deeplabv3_mnv2_*``), with the batch-norm statistics kept as they are.

Inputs are float images scaled to [-1, 1] (``keras_mnv2.preprocess_input``), as the official
models were trained; a uint8 file's input quantization (scale 1/128, zero point 128) maps its
pixels into the same range.
"""

import os
import re

import numpy as np

from keras_mnv2.blocks import BN_EPSILON

KINDS = ("classifier", "deeplab", "ssdlite")
_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_ROUNDINGS = ((8, None), (1, 1))  # keras.applications' rule, DeepLab's rule for dm != 1

# TF-slim / TF Object Detection API / DeepLab scope names -> keras_mnv2 layer names.
_OFFICIAL_NAMES = (
    (r"(?:^|/)MobilenetV2/Conv/", lambda m: "Conv1"),
    (r"(?:^|/)MobilenetV2/Conv_1/", lambda m: "Conv_1"),
    (r"(?:^|/)MobilenetV2/expanded_conv/(depthwise|project)/",
     lambda m: f"expanded_conv_{m.group(1)}"),
    (r"(?:^|/)MobilenetV2/expanded_conv_(\d+)/(expand|depthwise|project)/",
     lambda m: f"block_{m.group(1)}_{m.group(2)}"),
    (r"(?:^|/)MobilenetV2/Logits/Conv2d_1c_1x1/", lambda m: "predictions"),
    (r"(?:^|/)layer_19_1_Conv2d_(\d)_1x1_\d+/", lambda m: f"extra_{int(m.group(1)) - 1}_reduce"),
    (r"(?:^|/)layer_19_2_Conv2d_(\d)_3x3_s2_\d+_depthwise/",
     lambda m: f"extra_{int(m.group(1)) - 1}_depthwise"),
    (r"(?:^|/)layer_19_2_Conv2d_(\d)_3x3_s2_\d+/",
     lambda m: f"extra_{int(m.group(1)) - 1}_project"),
    (r"(?:^|/)BoxPredictor_(\d)/(BoxEncoding|Class)Predictor(_depthwise)?/",
     lambda m: f"{'box' if m.group(2) == 'BoxEncoding' else 'class'}_predictor_{m.group(1)}"
               f"{m.group(3) or ''}"),
    (r"(?:^|/)logits/semantic/", lambda m: "logits"),
    (r"(?:^|/)(aspp\d|image_pooling|concat_projection)/", lambda m: m.group(1)),
)
# keras_mnv2's own layer names, as the TFLite converter leaves them in tensor names
# ("<model>/block_1_expand_1/convolution", "<model>/block_1_depthwise_relu_1/Relu6").
_OWN_NAME = re.compile(
    r"(?:^|/)(Conv1|Conv_1|expanded_conv_(?:depthwise|project)|block_\d+_(?:expand|depthwise|"
    r"project)|predictions|aspp\d|image_pooling|concat_projection|logits|"
    r"extra_\d_(?:reduce|depthwise|project)|(?:box|class)_predictor_\d(?:_depthwise)?)"
    r"(?:_relu|_BN|_bn)?(?:_\d+)?/"
)


def layer_key(tensor_name):
    """The keras_mnv2 layer a weight tensor belongs to, from its name (first ``;`` part), or
    None."""
    first = tensor_name.split(";")[0]
    for pattern, name in _OFFICIAL_NAMES:
        found = re.search(pattern, first + "/")
        if found:
            return name(found)
    found = _OWN_NAME.search(first + "/")
    return found.group(1) if found else None


# ----------------------------------------------------------------------------------------------
# Reading a .tflite file


def _dequantize(value, detail):
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float64)
    if value.dtype in (np.float32, np.float64):
        return value.astype(np.float32)
    if value.dtype == np.float16:
        return value.astype(np.float32)
    if scales.size == 0:
        return value.astype(np.float32)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.float64)
    shape = [1] * value.ndim
    if scales.size > 1:
        shape[int(params.get("quantized_dimension", 0))] = scales.size
    return ((value.astype(np.float64) - zero_points.reshape(shape)) *
            scales.reshape(shape)).astype(np.float32)


class TfliteGraph:
    """The operators and constant tensors of a .tflite file (read without delegates)."""

    def __init__(self, path):
        from keras_mnv2.deploy.tflite import interpreter

        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"TFLite file not found: {self.path}")
        try:
            self.interpreter = interpreter(self.path, delegates=False)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{self.path} is not a readable TFLite model: {err}") from err
        self.tensors = {t["index"]: t for t in self.interpreter.get_tensor_details()}
        self.ops = self.interpreter._get_ops_details()
        self.producer, self.consumers = {}, {}
        for op in self.ops:
            for index in op["outputs"]:
                self.producer[index] = op
            for index in op["inputs"]:
                self.consumers.setdefault(index, []).append(op)
        self.input = self.interpreter.get_input_details()[0]

    def name(self, index):
        return self.tensors[index]["name"]

    def shape(self, index):
        return tuple(int(d) for d in self.tensors[index]["shape"])

    def constant(self, index):
        """A constant tensor as float32, dequantized (through a DEQUANTIZE op for float16)."""
        op = self.producer.get(index)
        if op is not None and op["op_name"] == "DEQUANTIZE":
            return self.constant(op["inputs"][0])
        if op is not None:
            raise ValueError(f"{self.path}: tensor {self.name(index)!r} is not a constant")
        return _dequantize(np.asarray(self.interpreter.get_tensor(index)), self.tensors[index])

    def is_constant(self, index):
        op = self.producer.get(index)
        return op is None or (op["op_name"] == "DEQUANTIZE" and op["inputs"][0] not in
                              self.producer)

    def affine_after(self, index):
        """A per-channel ``x * scale + offset`` the converter left after a convolution's output
        ``index`` (an unfolded batch norm: dilated convolutions run between SPACE_TO_BATCH_ND
        and BATCH_TO_SPACE_ND, which stops the folding): ``(scale, offset)``, either None."""
        scale = offset = None
        for kind in ("BATCH_TO_SPACE_ND", "MUL", "ADD"):
            users = self.consumers.get(index, [])
            if len(users) != 1 or users[0]["op_name"] != kind:
                continue
            op = users[0]
            if kind == "BATCH_TO_SPACE_ND":
                index = op["outputs"][0]
                continue
            others = [i for i in op["inputs"] if i != index]
            if len(others) != 1 or not self.is_constant(others[0]):
                break
            value = self.constant(others[0]).reshape(-1)
            if kind == "MUL":
                scale = value
            else:
                offset = value
            index = op["outputs"][0]
        return scale, offset

    def weight_name(self, index):
        """The name of a weight tensor, looking through a DEQUANTIZE op."""
        op = self.producer.get(index)
        if op is not None and op["op_name"] == "DEQUANTIZE":
            return self.name(op["inputs"][0])
        return self.name(index)


def read_tflite_weights(path):
    """{keras_mnv2 layer name: (op kind, kernel, bias, output shape)} of every convolution and
    fully connected op in a .tflite file, plus the file's facts: ``(weights, facts)``, where
    ``facts`` holds the input shape and dtype, whether a softmax ends the graph, and the
    anchors of a ``TFLite_Detection_PostProcess`` op (None without one)."""
    graph = TfliteGraph(path)
    weights, unnamed = {}, []
    facts = {"input_shape": graph.shape(graph.input["index"])[1:],
             "input_dtype": np.dtype(graph.input["dtype"]).name,
             "softmax": False, "anchors": None, "ops": [op["op_name"] for op in graph.ops]}
    for op in graph.ops:
        kind = op["op_name"]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            inputs = [i for i in op["inputs"]]
            name = graph.weight_name(inputs[1])
            key = layer_key(name)
            if key is None:
                unnamed.append(name)
                continue
            if key in weights:
                raise ValueError(f"{graph.path}: two {kind} ops map to layer {key!r}")
            kernel = graph.constant(inputs[1])
            bias = graph.constant(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
            scale, offset = graph.affine_after(op["outputs"][0])
            if scale is not None or offset is not None:  # fold what the converter did not
                channels = kernel.shape[-1] if kind == "DEPTHWISE_CONV_2D" else kernel.shape[0]
                bias = np.zeros(channels, np.float32) if bias is None else bias
                if scale is not None:
                    shape = (1, 1, 1, -1) if kind == "DEPTHWISE_CONV_2D" else \
                        (-1,) + (1,) * (kernel.ndim - 1)
                    kernel = kernel * scale.reshape(shape)
                    bias = bias * scale
                if offset is not None:
                    bias = bias + offset
            weights[key] = (kind, kernel, bias, graph.shape(op["outputs"][0]))
        elif kind == "SOFTMAX":
            facts["softmax"] = True
        elif kind == "TFLite_Detection_PostProcess" or "PostProcess" in kind:
            if len(op["inputs"]) > 2 and op["inputs"][2] not in graph.producer:
                facts["anchors"] = graph.constant(op["inputs"][2])
    if unnamed:
        raise ValueError(
            f"{graph.path}: {len(unnamed)} convolution(s) whose weights name no MobileNetV2 "
            f"layer (TF-slim, Object Detection API, DeepLab or keras_mnv2 names), e.g. "
            f"{unnamed[0]!r}: not a MobileNetV2-family model this converter knows"
        )
    if not weights:
        raise ValueError(f"{graph.path}: no convolution found")
    return weights, facts


# ----------------------------------------------------------------------------------------------
# What a set of weights is


def _block_widths(widths):
    """Conv1 and the 17 block projection widths from {layer: out channels}."""
    names = ["Conv1", "expanded_conv_project"] + [f"block_{i}_project" for i in range(1, 17)]
    missing = [n for n in names if n not in widths]
    if missing:
        raise ValueError(f"the MobileNetV2 backbone is incomplete: no {', '.join(missing[:3])}")
    return [widths[n] for n in names]


def infer_width(widths):
    """``(alpha, divisible_by, min_depth)`` that reproduce the backbone widths
    ({layer: output channels}); ValueError when none does."""
    from keras_mnv2.mobilenet_v2 import BLOCK_SPECS, channel_rounding

    found = _block_widths(widths)
    paper = [c for _, c, n, _ in BLOCK_SPECS for _ in range(n)]
    candidates = list(_ALPHAS) + [round(a, 4) for a in np.arange(0.05, 3.0, 0.0025)]
    for divisible_by, min_depth in _ROUNDINGS:
        for alpha in candidates:
            width = channel_rounding(alpha, divisible_by, min_depth)
            if [width(32, stem=True)] + [width(c) for c in paper] == found:
                return float(alpha), divisible_by, min_depth
    raise ValueError(f"backbone widths {found} fit no width multiplier of MobileNetV2")


def describe(weights, input_shape):
    """The builder and keyword arguments a set of weights ({layer: (kind, kernel, bias, output
    shape)}, from ``read_tflite_weights`` or a checkpoint) needs: ``(kind, kwargs)``."""
    widths = {key: int(w[3][-1]) for key, w in weights.items()}
    alpha, divisible_by, min_depth = infer_width(widths)
    rounding = {} if (divisible_by, min_depth) == (8, None) else {
        "divisible_by": divisible_by, "min_depth": min_depth}
    height, width = int(input_shape[0]), int(input_shape[1])
    if "box_predictor_0" in weights or "class_predictor_0" in weights:
        from keras_mnv2.detection.ssdlite import EXTRA_DEPTHS, MIN_EXTRA_DEPTH

        if height != width:
            raise ValueError(f"SSDLite needs a square input, the file has {height}x{width}")
        boxes = [widths[f"box_predictor_{i}"] // 4 for i in range(6)]
        num_classes = widths["class_predictor_1"] // boxes[1] - 1
        kwargs = {"num_classes": num_classes, "alpha": alpha, "input_size": height}
        extra = [widths[f"extra_{i}_project"] for i in range(1, 5)]
        if extra != [max(int(d * alpha), MIN_EXTRA_DEPTH) for d in EXTRA_DEPTHS]:
            kwargs["extra_depths"] = tuple(
                next(d for d in range(1, 8192) if max(int(d * alpha), MIN_EXTRA_DEPTH) == w)
                for w in extra)
        if boxes != [3, 6, 6, 6, 6, 6]:
            raise ValueError(f"SSDLite boxes per cell {boxes}: only the default anchor layout "
                             "(3 on the lowest layer, 6 elsewhere) is supported")
        if rounding:
            raise ValueError("SSDLite with DeepLab channel rounding is not supported")
        return "ssdlite", kwargs
    if "aspp0" in weights or "logits" in weights:
        feature = weights["block_16_project"][3]
        output_stride = 16 if feature[1] == -(-height // 16) else 8
        kwargs = {"num_classes": widths["logits"], "alpha": alpha,
                  "input_shape": (height, width, 3), "output_stride": output_stride,
                  "aspp": "aspp1" in weights, **rounding}
        return "deeplab", kwargs
    if "predictions" not in weights:
        raise ValueError("no classifier, DeepLab or SSDLite head found")
    kwargs = {"alpha": alpha, "input_shape": (height, width, 3),
              "classes": widths["predictions"], **rounding}
    return "classifier", kwargs


def build(kind, kwargs, name=None):
    """The keras_mnv2 model of ``describe``'s answer."""
    from keras_mnv2.detection.ssdlite import SSDLite
    from keras_mnv2.mobilenet_v2 import MobileNetV2
    from keras_mnv2.segmentation.deeplab import DeepLabV3

    builder = {"classifier": MobileNetV2, "deeplab": DeepLabV3, "ssdlite": SSDLite}[kind]
    if name is not None:
        kwargs = {**kwargs, "name": name}
    return builder(**kwargs)


# ----------------------------------------------------------------------------------------------
# Loading


def _bn_after(model, name):
    for candidate in (name + "_BN", name + "_bn", "bn_" + name):
        try:
            return model.get_layer(candidate)
        except ValueError:
            continue
    return None


def _keras_kernel(kind, kernel, layer, drop_background=False):
    """A TFLite kernel in the layout of ``layer`` (without output column 0 with
    ``drop_background``)."""
    target = tuple(layer.weights[0].shape)
    if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C] -> [kh, kw, C, 1]
        kernel = np.transpose(kernel, (1, 2, 3, 0))
    elif kind == "CONV_2D":  # [O, kh, kw, I] -> [kh, kw, I, O]
        kernel = np.transpose(kernel, (1, 2, 3, 0))
    else:  # FULLY_CONNECTED [O, I] -> [I, O]
        kernel = kernel.T
    if len(target) == 2 and kernel.ndim == 4:  # a 1x1 conv classifier into a Dense
        kernel = kernel.reshape(-1, kernel.shape[-1])
    if drop_background:
        kernel = kernel[..., 1:]
    if tuple(kernel.shape) != target:
        raise ValueError(f"layer {layer.name!r}: kernel {kernel.shape} from the file, "
                         f"{target} in the model")
    return kernel


def load_folded(model, weights, drop_background=False):
    """Loads folded weights ({layer: (op kind, kernel, bias, shape)}) into ``model``: kernels
    into the convolutions, biases into the layer's own bias or the batch norm after it (set to
    the identity plus the bias). Raises ValueError naming any weighted layer left unloaded.
    Returns the number of layers set."""
    loaded = set()
    for key, (kind, kernel, bias, _) in weights.items():
        layer = model.get_layer(key)
        drop = drop_background and key == "predictions"
        kernel = _keras_kernel(kind, kernel, layer, drop)
        if bias is None:
            bias = np.zeros(kernel.shape[-1] if kind != "DEPTHWISE_CONV_2D"
                            else kernel.shape[-2], np.float32)
        elif drop:
            bias = bias[1:]
        if len(layer.weights) == 2:
            layer.set_weights([kernel, bias])
        else:
            layer.set_weights([kernel])
            bn = _bn_after(model, key)
            if bn is None:
                raise ValueError(f"layer {key!r} has no bias and no batch norm after it")
            ones = np.ones_like(bias)
            bn.set_weights([ones, bias, np.zeros_like(bias), ones - BN_EPSILON])
            loaded.add(bn.name)
        loaded.add(key)
    left = [layer.name for layer in model.layers if layer.weights and layer.name not in loaded]
    if left:
        raise ValueError(f"{len(left)} weighted layer(s) of {model.name!r} got no weights from "
                         f"the file: {', '.join(left[:5])}")
    return len(loaded)


def _drop_background(kind, kwargs, drop_background, source):
    """With ``drop_background``, a 1001-class classifier is built with 1000 classes (the
    background row is left out when the weights load); anything else is refused."""
    if not drop_background:
        return
    if kind != "classifier":
        raise ValueError("drop_background applies to 1001-class classifiers only")
    if kwargs["classes"] != 1001:
        raise ValueError(f"drop_background needs a 1001-class {source}, got "
                         f"{kwargs['classes']} classes")
    kwargs["classes"] = 1000


def from_tflite(path, drop_background=False, name=None):
    """A keras_mnv2 model holding the weights of a MobileNetV2-family ``.tflite`` file.

    Args:
        path: a float32, float16 or uint8/int8 .tflite classifier (TF-slim names or
            keras_mnv2's), Mobile DeepLabv3 or SSDLite (the graph up to its post-processing).
        drop_background: for a 1001-class TF-slim classifier, drop class 0 (background) to get
            the 1000 ImageNet classes in keras.applications order.
        name: the model's name (default: the builder's).

    The model takes float images in [-1, 1]; a classifier ends in softmax when the file does,
    DeepLab returns logits (upsampled with ``align_corners=True``, the official convention),
    SSDLite its raw ``{"boxes", "classes"}``, with ``model.anchors`` taken from the file's
    post-processing op when it has one. ``model.official`` records what was recognized.
    """
    weights, facts = read_tflite_weights(path)
    kind, kwargs = describe(weights, facts["input_shape"])
    if kind == "classifier":
        kwargs["classifier_activation"] = "softmax" if facts["softmax"] else None
    _drop_background(kind, kwargs, drop_background, "file")
    model = build(kind, kwargs, name)
    load_folded(model, weights, drop_background)
    if kind == "ssdlite" and facts["anchors"] is not None:
        if facts["anchors"].shape != model.anchors.shape:
            raise ValueError(f"the file's anchors {facts['anchors'].shape} do not line up with "
                             f"the model's {model.anchors.shape}")
        model.anchors = facts["anchors"].astype(np.float32)
    model.official = {"kind": kind, "source": os.path.basename(os.fspath(path)), **kwargs}
    return model


# ----------------------------------------------------------------------------------------------
# TF1 name-based checkpoints

# Batch-norm epsilon of each official family where it is not keras_mnv2's 1e-3: DeepLab's head
# (deeplab/model.py: batch_norm epsilon 1e-5); TF-slim MobileNetV2 and the Object Detection
# API's SSDLite use 1e-3.
DEEPLAB_HEAD_EPSILON = 1e-5
# ssdlite_mobilenet_v2_coco's pipeline.config: ssd_anchor_generator, 6 layers, scales 0.2-0.95.
OD_API_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
_DEEPLAB_HEAD = ("image_pooling", "aspp0", "aspp1", "aspp2", "aspp3", "concat_projection")
_BN_PARTS = ("gamma", "beta", "moving_mean", "moving_variance")


def read_checkpoint_weights(path):
    """{keras_mnv2 layer name: {"kernel", "bias", "bn": {gamma, beta, moving_mean,
    moving_variance}}} from a TF1 name-based checkpoint of an official MobileNetV2-family model.

    Variables outside the model (global_step, optimizer slots, ExponentialMovingAverage shadows
    unless ``MovingAverage`` is the only copy) are left out; a separable ASPP branch, which the
    builders do not have, raises ValueError.
    """
    import tensorflow as tf

    path = os.fspath(path)
    try:
        reader = tf.train.load_checkpoint(path)
    except (ValueError, tf.errors.OpError) as err:
        raise ValueError(f"{path} is not a readable TF checkpoint: {err}") from err
    shapes = reader.get_variable_to_shape_map()
    layers = {}
    for name in sorted(shapes):
        if name.endswith(("/Momentum", "/RMSProp", "/RMSProp_1", "/Adam", "/Adam_1",
                          "/ExponentialMovingAverage")) or "/ExponentialMovingAverage" in name:
            continue
        if re.search(r"(?:^|/)aspp\d_(depthwise|pointwise)/", name):
            raise ValueError(f"{path}: {name!r} is a separable ASPP branch; keras_mnv2's "
                             "DeepLabV3 has plain atrous ASPP convolutions (the official "
                             "MobileNetV2 DeepLab models have no ASPP)")
        part = name.rsplit("/", 1)[-1]
        if part in _BN_PARTS and name.rsplit("/", 2)[-2] == "BatchNorm":
            scope = name.rsplit("/", 2)[0]
        elif part in ("weights", "depthwise_weights", "biases"):
            scope = name.rsplit("/", 1)[0]
        else:
            continue
        key = layer_key(scope + "/")
        if key is None:
            continue
        entry = layers.setdefault(key, {"bn": {}})
        value = reader.get_tensor(name).astype(np.float32)
        if part in _BN_PARTS:
            entry["bn"][part] = value
        elif part == "biases":
            entry["bias"] = value
        else:
            if "kernel" in entry:
                raise ValueError(f"{path}: two kernels map to layer {key!r}")
            entry["kernel"], entry["depthwise"] = value, part == "depthwise_weights"
    if not any("kernel" in entry for entry in layers.values()):
        raise ValueError(f"{path}: no MobileNetV2 variable found (expected TF-slim, Object "
                         "Detection API or DeepLab names such as MobilenetV2/Conv/weights)")
    missing = [key for key, entry in layers.items() if "kernel" not in entry]
    if missing:
        raise ValueError(f"{path}: batch norm without weights for {', '.join(missing[:5])}")
    return layers


def _checkpoint_input_size(path, default):
    found = re.search(r"mobilenet_v2_\d+(?:\.\d+)?_(\d+)", os.fspath(path))  # TF-slim's names
    return int(found.group(1)) if found else default


def from_tf_checkpoint(path, input_size=None, output_stride=None, drop_background=False,
                       name=None):
    """A keras_mnv2 model holding the weights of a TF1 name-based checkpoint.

    Args:
        path: the checkpoint prefix (``.../model.ckpt``, ``mobilenet_v2_1.0_224.ckpt``): a
            TF-slim MobileNetV2 classifier (1001 classes), the Object Detection API's
            ``ssdlite_mobilenet_v2_coco`` (``FeatureExtractor/MobilenetV2/...``,
            ``BoxPredictor_{i}/...``) or a DeepLab MobileNetV2 model (``image_pooling``,
            ``aspp0``, ``concat_projection``, ``logits/semantic``; the dm 0.5 model included).
        input_size: the input side; default from a TF-slim name in the path
            (``mobilenet_v2_{depth}_{size}``), else 224 (classifier), 300 (SSDLite) or 513
            (DeepLab).
        output_stride: DeepLab's (default 16; 8 is the official models' other setting).
        drop_background: for a 1001-class classifier, keep the 1000 ImageNet classes.
        name: the model's name (default: the builder's).

    Batch-norm statistics are kept (nothing is folded), rescaled where the official epsilon
    differs from keras_mnv2's 1e-3 (DeepLab's head), so the model fine-tunes as trained.
    """
    path = os.fspath(path)
    layers = read_checkpoint_weights(path)
    if "box_predictor_0" in layers or "class_predictor_0" in layers:
        family, default_size = "ssdlite", 300
    elif "logits" in layers:
        family, default_size = "deeplab", 513
    else:
        family, default_size = "classifier", 224
    size = input_size or _checkpoint_input_size(path, default_size)
    stride = output_stride or 16
    feature = -(-size // stride)
    shapes = {key: ("", None, None, (1, feature, feature, int(entry["kernel"].shape[-1])
                                     if not entry["depthwise"] else
                                     int(entry["kernel"].shape[-2])))
              for key, entry in layers.items()}
    kind, kwargs = describe(shapes, (size, size, 3))
    if kind == "ssdlite":  # the pipeline config's anchors (aspect ratio 0.3333, as written)
        kwargs["aspect_ratios"] = OD_API_ASPECT_RATIOS
    if kind == "deeplab" and output_stride is not None:
        kwargs["output_stride"] = output_stride
    _drop_background(kind, kwargs, drop_background, "checkpoint")
    model = build(kind, kwargs, name)
    load_unfolded(model, layers, drop_background, head_epsilon=(
        DEEPLAB_HEAD_EPSILON if kind == "deeplab" else BN_EPSILON))
    model.official = {"kind": kind, "source": os.path.basename(path), **kwargs}
    return model


def load_unfolded(model, layers, drop_background=False, head_epsilon=BN_EPSILON):
    """Loads checkpoint weights ({layer: {kernel, bias, bn}}) into ``model``, batch norm
    included; raises ValueError naming any weighted layer left unloaded."""
    loaded = set()
    for key, entry in layers.items():
        layer = model.get_layer(key)
        kernel = entry["kernel"]
        target = tuple(layer.weights[0].shape)
        if len(target) == 2 and kernel.ndim == 4:  # a 1x1 conv classifier into a Dense
            kernel = kernel.reshape(-1, kernel.shape[-1])
        if drop_background and key == "predictions":
            kernel = kernel[:, 1:]
        if tuple(kernel.shape) != target:
            raise ValueError(f"layer {key!r}: kernel {kernel.shape} in the checkpoint, "
                             f"{target} in the model")
        values = [kernel]
        if len(layer.weights) == 2:
            bias = entry.get("bias")
            if bias is None:
                raise ValueError(f"layer {key!r}: no biases in the checkpoint")
            values.append(bias[1:] if drop_background and key == "predictions" else bias)
        layer.set_weights(values)
        loaded.add(key)
        if entry["bn"]:
            bn = _bn_after(model, key)
            if bn is None:
                raise ValueError(f"layer {key!r} has batch norm in the checkpoint, not in the "
                                 "model")
            stats = entry["bn"]
            channels = stats["moving_mean"].shape
            gamma = stats.get("gamma", np.ones(channels, np.float32))
            beta = stats.get("beta", np.zeros(channels, np.float32))
            mean, variance = stats["moving_mean"], stats["moving_variance"]
            epsilon = head_epsilon if key in _DEEPLAB_HEAD else BN_EPSILON
            if epsilon != BN_EPSILON:  # same function with keras_mnv2's epsilon
                gamma = gamma * np.sqrt((variance + BN_EPSILON) / (variance + epsilon))
            bn.set_weights([gamma, beta, mean, variance])
            loaded.add(bn.name)
    left = [layer.name for layer in model.layers if layer.weights and layer.name not in loaded]
    if left:
        raise ValueError(f"{len(left)} weighted layer(s) of {model.name!r} got no weights from "
                         f"the checkpoint: {', '.join(left[:5])}")
    return len(loaded)


def load(path, **kwargs):
    """``from_tflite`` for a ``.tflite`` file, ``from_tf_checkpoint`` for a checkpoint prefix
    (a path with a ``.index`` file beside it, or a checkpoint directory)."""
    path = os.fspath(path)
    if path.endswith(".tflite"):
        return from_tflite(path, **kwargs)
    if os.path.exists(path + ".index") or os.path.isdir(path):
        return from_tf_checkpoint(path, **kwargs)
    raise ValueError(f"{path}: expected a .tflite file or a TF checkpoint prefix (with a "
                     ".index file beside it)")


def is_official_path(path):
    """Whether ``path`` is something ``load`` reads (a .tflite file or a TF checkpoint)."""
    path = os.fspath(path)
    return path.endswith(".tflite") or os.path.exists(path + ".index")


def load_into(model, path):
    """Copies the weights of an official file (``load``) into ``model`` by layer name (the
    ``weights=`` argument of the builders). A 1001-class classifier file fills a 1000-class top
    without its background row; without a top (or for a backbone inside SSDLite / DeepLabV3),
    the layers ``model`` lacks are skipped. Returns the number of layers copied."""
    from keras_mnv2.weights import copy_weights

    source = load(path)
    try:
        top = model.get_layer("predictions")
    except ValueError:
        top = None
    if (top is not None and getattr(top, "units", None) == 1000
            and source.official.get("classes") == 1001):
        source = load(path, drop_background=True)
    copied = copy_weights(source, model, skip_missing=True)
    anchors = getattr(source, "anchors", None)
    if anchors is not None and np.shape(getattr(model, "anchors", None)) == np.shape(anchors):
        model.anchors = np.asarray(anchors)
    return copied


# ----------------------------------------------------------------------------------------------
# Class ids of the official models

# COCO category ids 1..90 of the Object Detection API label map (mscoco_label_map): 80 named,
# 10 unused ids. ssdlite_mobilenet_v2_coco predicts 91 scores: 0 is background, k is COCO id k.
COCO_LABELS = dict(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", None, "backpack",
    "umbrella", None, None, "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", None, "dining table", None, None, "toilet",
    None, "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", None, "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"), start=1))
# PASCAL VOC 2012 segmentation classes, as the official DeepLab models number them.
VOC_LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
              "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
              "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def coco_label(index):
    """The name of class ``index`` of an official COCO detector's 91 scores ("background" for
    0, None for the 10 ids COCO leaves unused)."""
    if not 0 <= int(index) <= 90:
        raise ValueError(f"COCO class index must be in [0, 90], got {index}")
    return "background" if int(index) == 0 else COCO_LABELS[int(index)]


def voc_label(index):
    """The name of class ``index`` (0..20) of an official PASCAL VOC DeepLab model."""
    if not 0 <= int(index) < len(VOC_LABELS):
        raise ValueError(f"VOC class index must be in [0, 20], got {index}")
    return VOC_LABELS[int(index)]


# ----------------------------------------------------------------------------------------------
# Fine-tuning from another model's weights

_CLASS_LAYERS = re.compile(r"predictions|logits|class_predictor_\d")


def init_from(model, source, freeze_batch_norm=False, log=print):
    """Starts ``model`` from another model's weights, for fine-tuning.

    ``source`` is a keras_mnv2 model, a ``.keras`` file, an official ``.tflite`` file or a TF1
    checkpoint (``load``). Every weighted layer whose name and weight shapes match is copied;
    the rest keep their fresh initialization: the class predictors (``predictions``,
    ``logits``, ``class_predictor_{i}``) when the class set differs, any layer the source lacks.
    ``freeze_batch_norm`` makes every BatchNormalization layer non-trainable (inference-mode
    statistics, the usual choice for small fine-tuning batches). ``log`` gets one line saying
    what was loaded and what was left (None: quiet). Returns ``(loaded, left)``, lists of
    layer names.
    """
    import keras

    from keras_mnv2.weights import _all_layers

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".keras"):
            if not os.path.exists(path):
                raise FileNotFoundError(f"--init model not found: {path}")
            import keras_mnv2.detection.losses  # noqa: F401  (losses a compiled model names)

            source = keras.saving.load_model(path, compile=False)
        elif is_official_path(path) or os.path.isdir(path):
            source = load(path)
        else:
            raise ValueError(f"{path}: expected a .keras model, a .tflite file or a TF "
                             "checkpoint prefix")
    found = {layer.name: layer for layer in _all_layers(source) if layer.weights}
    loaded, left = [], []
    for layer in _all_layers(model):
        if not layer.weights:
            continue
        other = found.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is not None and [tuple(w.shape) for w in other.weights] == shapes:
            layer.set_weights(other.get_weights())
            loaded.append(layer.name)
        else:
            left.append(layer.name)
    if not loaded:
        raise ValueError(f"no layer of {model.name!r} matches {source.name!r} in name and shape")
    if freeze_batch_norm:
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    if log is not None:
        classes = [n for n in left if _CLASS_LAYERS.fullmatch(n)]
        others = [n for n in left if n not in classes]
        log(f"init from {source.name}: loaded {len(loaded)} of {len(loaded) + len(left)} "
            f"weighted layers; re-initialized {len(classes)} class predictor(s)"
            + (f" ({', '.join(classes)})" if classes else "")
            + (f" and {len(others)} other layer(s) ({', '.join(others[:8])}"
               f"{', ...' if len(others) > 8 else ''})" if others else "")
            + ("; batch norm frozen" if freeze_batch_norm else ""))
    return loaded, left
