"""Reading the officially trained MobileNetV2-family files and loading their weights into a
keras_mnv2 model that is already built (the ``weights=`` argument of the builders).

Two sources: ``.tflite`` files (float32, float16 or uint8/int8, weights dequantized; batch norm
folded into the convolutions, as the converter leaves it) and TF1 name-based checkpoints (batch
norm kept). In a ``.tflite`` file the layers are found by the graph's structure
(``keras_mnv2.structure``), confirmed by the tensor names where they are TF-slim, Object
Detection API, DeepLab or keras_mnv2 names; in a checkpoint, by those names.
``keras_mnv2.convert`` recognizes what a file is and builds the model for it; this module only
reads and loads, so the builders can use it without importing themselves back.
"""

import os
import re

import numpy as np

from keras_mnv2.blocks import BN_EPSILON
from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.weights import _all_layers

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
            raise MissingFileError(f"TFLite file not found: {self.path}")
        try:
            self.interpreter = interpreter(self.path, delegates=False)
        except (ValueError, RuntimeError) as err:
            raise InputError(f"{self.path} is not a readable TFLite model: {err}") from err
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
            raise InputError(f"{self.path}: tensor {self.name(index)!r} is not a constant")
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
    keys, recognized = _layer_keys(graph)
    weights = {}
    facts = {"input_shape": graph.shape(graph.input["index"])[1:],
             "input_dtype": np.dtype(graph.input["dtype"]).name, "recognized": recognized,
             "softmax": False, "anchors": None, "ops": [op["op_name"] for op in graph.ops]}
    for op in graph.ops:
        kind = op["op_name"]
        if op["index"] in keys:
            inputs = [i for i in op["inputs"]]
            key = keys[op["index"]]
            if key in weights:
                raise InputError(f"{graph.path}: two {kind} ops map to layer {key!r}")
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
    return weights, facts


def _layer_keys(graph):
    """``({op index: keras_mnv2 layer}, how)`` for every convolution and fully connected op:
    from the graph's structure (``keras_mnv2.structure``), which the tensor names, where they
    name layers (TF-slim, Object Detection API, DeepLab or keras_mnv2's own), confirm; from the
    names alone where the structure is not one the walk knows. ``how`` says which."""
    from keras_mnv2 import structure

    convolutions = [op for op in graph.ops if op["op_name"] in structure.CONVOLUTIONS]
    if not convolutions:
        raise InputError(f"{graph.path}: no convolution found")
    by_name = {op["index"]: layer_key(graph.weight_name(op["inputs"][1])) for op in convolutions}
    try:
        by_graph, _ = structure.layer_names(graph)
    except structure.NotMobileNetV2 as err:
        unnamed = [graph.weight_name(op["inputs"][1]) for op in convolutions
                   if by_name[op["index"]] is None]
        if unnamed:
            raise InputError(
                f"{graph.path}: not a MobileNetV2-family model this converter knows: its graph "
                f"is not one ({err}), and {len(unnamed)} convolution(s) have weights that name "
                f"no MobileNetV2 layer (TF-slim, Object Detection API, DeepLab or keras_mnv2 "
                f"names), e.g. {unnamed[0]!r}") from err
        return by_name, f"tensor names (graph not recognized: {err})"
    named = {index: key for index, key in by_name.items() if key is not None}
    differ = [(by_graph[index], key) for index, key in named.items() if key != by_graph[index]]
    if differ:
        import warnings

        warnings.warn(f"{graph.path}: {len(differ)} of {len(named)} tensor names disagree with "
                      f"the graph's structure (e.g. the graph's {differ[0][0]!r} is named "
                      f"{differ[0][1]!r}); the structure is used", stacklevel=3)
        return by_graph, f"graph ({len(differ)} tensor names disagree)"
    return by_graph, "graph, names agree" if named else "graph (no layer names in the file)"

# ----------------------------------------------------------------------------------------------
# Loading into a built model


def _layer_map(model):
    return {layer.name: layer for layer in _all_layers(model)}


def _layer(layers, model, key):
    if key not in layers:
        raise InputError(f"the file has layer {key!r}, which {model.name!r} lacks")
    return layers[key]


def _check_complete(model, layers, loaded, partial, source):
    if partial:
        if not loaded:
            raise InputError(f"no layer of the {source} matches a layer of {model.name!r}")
        return
    left = [name for name, layer in layers.items() if layer.weights and name not in loaded]
    if left:
        raise InputError(f"{len(left)} weighted layer(s) of {model.name!r} got no weights from "
                         f"the {source}: {', '.join(left[:5])}")


def _bn_after(layers, name):
    for candidate in (name + "_BN", name + "_bn", "bn_" + name):
        if candidate in layers:
            return layers[candidate]
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
        raise InputError(f"layer {layer.name!r}: kernel {kernel.shape} from the file, "
                         f"{target} in the model")
    return kernel


def load_folded(model, weights, drop_background=False, partial=False):
    """Loads folded weights ({layer: (op kind, kernel, bias, shape)}) into ``model``: kernels
    into the convolutions, biases into the layer's own bias or the batch norm after it (set to
    the identity plus the bias). Raises ValueError naming any weighted layer left unloaded, or
    with ``partial`` skips the file's layers the model lacks and leaves the model's others as
    they are. Returns the number of layers set."""
    layers, loaded = _layer_map(model), set()
    for key, (kind, kernel, bias, _) in weights.items():
        if partial and key not in layers:
            continue
        layer = _layer(layers, model, key)
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
            bn = _bn_after(layers, key)
            if bn is None:
                raise InputError(f"layer {key!r} has no bias and no batch norm after it")
            ones = np.ones_like(bias)
            bn.set_weights([ones, bias, np.zeros_like(bias), ones - BN_EPSILON])
            loaded.add(bn.name)
        loaded.add(key)
    _check_complete(model, layers, loaded, partial, "file")
    return len(loaded)

# ----------------------------------------------------------------------------------------------
# TF1 name-based checkpoints

# Batch-norm epsilon of each official family where it is not keras_mnv2's 1e-3: DeepLab's head
# (deeplab/model.py: batch_norm epsilon 1e-5); TF-slim MobileNetV2 and the Object Detection
# API's SSDLite use 1e-3.
DEEPLAB_HEAD_EPSILON = 1e-5
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
        raise InputError(f"{path} is not a readable TF checkpoint: {err}") from err
    shapes = reader.get_variable_to_shape_map()
    layers = {}
    for name in sorted(shapes):
        if name.endswith(("/Momentum", "/RMSProp", "/RMSProp_1", "/Adam", "/Adam_1",
                          "/ExponentialMovingAverage")) or "/ExponentialMovingAverage" in name:
            continue
        if re.search(r"(?:^|/)aspp\d_(depthwise|pointwise)/", name):
            raise InputError(f"{path}: {name!r} is a separable ASPP branch; keras_mnv2's "
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
                raise InputError(f"{path}: two kernels map to layer {key!r}")
            entry["kernel"], entry["depthwise"] = value, part == "depthwise_weights"
    if not any("kernel" in entry for entry in layers.values()):
        raise InputError(f"{path}: no MobileNetV2 variable found (expected TF-slim, Object "
                         "Detection API or DeepLab names such as MobilenetV2/Conv/weights)")
    missing = [key for key, entry in layers.items() if "kernel" not in entry]
    if missing:
        raise InputError(f"{path}: batch norm without weights for {', '.join(missing[:5])}")
    return layers


def load_unfolded(model, weights, drop_background=False, head_epsilon=BN_EPSILON,
                  partial=False):
    """Loads checkpoint weights ({layer: {kernel, bias, bn}}) into ``model``, batch norm
    included; raises ValueError naming any weighted layer left unloaded (``partial``: as in
    ``load_folded``). Returns the number of layers set."""
    layers, loaded = _layer_map(model), set()
    for key, entry in weights.items():
        if partial and key not in layers:
            continue
        layer = _layer(layers, model, key)
        kernel = entry["kernel"]
        target = tuple(layer.weights[0].shape)
        if len(target) == 2 and kernel.ndim == 4:  # a 1x1 conv classifier into a Dense
            kernel = kernel.reshape(-1, kernel.shape[-1])
        if drop_background and key == "predictions":
            kernel = kernel[:, 1:]
        if tuple(kernel.shape) != target:
            raise InputError(f"layer {key!r}: kernel {kernel.shape} in the checkpoint, "
                             f"{target} in the model")
        values = [kernel]
        if len(layer.weights) == 2:
            bias = entry.get("bias")
            if bias is None:
                raise InputError(f"layer {key!r}: no biases in the checkpoint")
            values.append(bias[1:] if drop_background and key == "predictions" else bias)
        layer.set_weights(values)
        loaded.add(key)
        if entry["bn"]:
            bn = _bn_after(layers, key)
            if bn is None:
                raise InputError(f"layer {key!r} has batch norm in the checkpoint, not in the "
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
    _check_complete(model, layers, loaded, partial, "checkpoint")
    return len(loaded)

# ----------------------------------------------------------------------------------------------
# The builders' weights= argument


def is_official_path(path):
    """Whether ``path`` is something ``load`` reads (a .tflite file or a TF checkpoint)."""
    path = os.fspath(path)
    return path.endswith(".tflite") or os.path.exists(path + ".index")


def load_into(model, path):
    """Loads the weights of an official file (a ``.tflite`` file or a TF1 checkpoint prefix) into
    ``model`` by layer name (the ``weights=`` argument of the builders). A 1001-class classifier
    file fills a 1000-class top without its background row; the file's layers ``model`` lacks
    are skipped (a file with a top into a model without one, a classifier's backbone into
    SSDLite or DeepLabV3), and ``model``'s layers the file lacks keep their values. An SSDLite
    file's post-processing anchors replace ``model.anchors`` when they line up. Returns the
    number of layers set."""
    path = os.fspath(path)
    layers = _layer_map(model)
    top = layers.get("predictions")
    units = getattr(top, "units", None)
    if path.endswith(".tflite"):
        weights, facts = read_tflite_weights(path)
        file_classes = int(weights["predictions"][3][-1]) if "predictions" in weights else None
        loaded = load_folded(model, weights, drop_background=units == 1000 and file_classes ==
                             1001, partial=True)
        anchors = facts["anchors"]
        if anchors is not None and np.shape(getattr(model, "anchors", None)) == anchors.shape:
            model.anchors = anchors.astype(np.float32)
        return loaded
    weights = read_checkpoint_weights(path)
    file_classes = (int(weights["predictions"]["kernel"].shape[-1]) if "predictions" in weights
                    else None)
    return load_unfolded(model, weights, drop_background=units == 1000 and file_classes == 1001,
                         head_epsilon=DEEPLAB_HEAD_EPSILON if "logits" in weights else BN_EPSILON,
                         partial=True)
