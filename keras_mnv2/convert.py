"""Officially trained MobileNetV2 models into keras_mnv2's builders.

``from_tflite(path)`` reads a MobileNetV2-family ``.tflite`` file (the TF-slim classifiers, Mobile
DeepLabv3, SSDLite up to its ``TFLite_Detection_PostProcess`` op, or a file keras_mnv2 itself
exported) in float32, float16 or uint8/int8, tells what it is from its graph, whatever its tensors
are called (``keras_mnv2.structure``; official or keras_mnv2 tensor names only confirm): kind,
width multiplier, channel rounding, input size, classes, output stride, ASPP; builds the
matching model with
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
from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.official import (  # noqa: F401  (the readers are public here too)
    DEEPLAB_HEAD_EPSILON, TfliteGraph, is_official_path, layer_key, load_folded, load_into,
    load_unfolded, read_checkpoint_weights, read_tflite_weights)
from keras_mnv2.labels import (  # noqa: F401  (the official class names, public here too)
    COCO_LABELS, VOC_LABELS, coco_label, voc_label)

KINDS = ("classifier", "deeplab", "ssdlite")
_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_ROUNDINGS = ((8, None), (1, 1))  # keras.applications' rule, DeepLab's rule for dm != 1

# ----------------------------------------------------------------------------------------------
# What a set of weights is


def _block_widths(widths):
    """Conv1 and the 17 block projection widths from {layer: out channels}."""
    names = ["Conv1", "expanded_conv_project"] + [f"block_{i}_project" for i in range(1, 17)]
    missing = [n for n in names if n not in widths]
    if missing:
        raise InputError(f"the MobileNetV2 backbone is incomplete: no {', '.join(missing[:3])}")
    return [widths[n] for n in names]


def infer_width(widths):
    """``(alpha, divisible_by, min_depth)`` that reproduce the backbone widths
    ({layer: output channels}); ValueError when none does."""
    from keras_mnv2.spec import BLOCK_SPECS, channel_rounding

    found = _block_widths(widths)
    paper = [c for _, c, n, _ in BLOCK_SPECS for _ in range(n)]
    candidates = list(_ALPHAS) + [round(a, 4) for a in np.arange(0.05, 3.0, 0.0025)]
    for divisible_by, min_depth in _ROUNDINGS:
        for alpha in candidates:
            width = channel_rounding(alpha, divisible_by, min_depth)
            if [width(32, stem=True)] + [width(c) for c in paper] == found:
                return float(alpha), divisible_by, min_depth
    raise InputError(f"backbone widths {found} fit no width multiplier of MobileNetV2")


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
            raise InputError(f"SSDLite needs a square input, the file has {height}x{width}")
        boxes = [widths[f"box_predictor_{i}"] // 4 for i in range(6)]
        num_classes = widths["class_predictor_1"] // boxes[1] - 1
        kwargs = {"num_classes": num_classes, "alpha": alpha, "input_size": height}
        extra = [widths[f"extra_{i}_project"] for i in range(1, 5)]
        if extra != [max(int(d * alpha), MIN_EXTRA_DEPTH) for d in EXTRA_DEPTHS]:
            kwargs["extra_depths"] = tuple(
                next(d for d in range(1, 8192) if max(int(d * alpha), MIN_EXTRA_DEPTH) == w)
                for w in extra)
        if boxes != [3, 6, 6, 6, 6, 6]:
            raise InputError(f"SSDLite boxes per cell {boxes}: only the default anchor layout "
                             "(3 on the lowest layer, 6 elsewhere) is supported")
        if rounding:
            raise InputError("SSDLite with DeepLab channel rounding is not supported")
        return "ssdlite", kwargs
    if "aspp0" in weights or "logits" in weights:
        feature = weights["block_16_project"][3]
        output_stride = 16 if feature[1] == -(-height // 16) else 8
        kwargs = {"num_classes": widths["logits"], "alpha": alpha,
                  "input_shape": (height, width, 3), "output_stride": output_stride,
                  "aspp": "aspp1" in weights, **rounding}
        return "deeplab", kwargs
    if "predictions" not in weights:
        raise InputError("no classifier, DeepLab or SSDLite head found")
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


def _drop_background(kind, kwargs, drop_background, source):
    """With ``drop_background``, a 1001-class classifier is built with 1000 classes (the
    background row is left out when the weights load); anything else is refused."""
    if not drop_background:
        return
    if kind != "classifier":
        raise InputError("drop_background applies to 1001-class classifiers only")
    if kwargs["classes"] != 1001:
        raise InputError(f"drop_background needs a 1001-class {source}, got "
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
            raise InputError(f"the file's anchors {facts['anchors'].shape} do not line up with "
                             f"the model's {model.anchors.shape}")
        model.anchors = facts["anchors"].astype(np.float32)
    model.official = {"kind": kind, "source": os.path.basename(os.fspath(path)), **kwargs,
                      "recognized_by": facts["recognized"]}
    return model


# ----------------------------------------------------------------------------------------------
# TF1 name-based checkpoints

# ssdlite_mobilenet_v2_coco's pipeline.config: ssd_anchor_generator, 6 layers, scales 0.2-0.95.
OD_API_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)


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


def load(path, **kwargs):
    """``from_tflite`` for a ``.tflite`` file, ``from_tf_checkpoint`` for a checkpoint prefix
    (a path with a ``.index`` file beside it, or a checkpoint directory)."""
    path = os.fspath(path)
    if path.endswith(".tflite"):
        return from_tflite(path, **kwargs)
    if os.path.exists(path + ".index") or os.path.isdir(path):
        return from_tf_checkpoint(path, **kwargs)
    raise InputError(f"{path}: expected a .tflite file or a TF checkpoint prefix (with a "
                     ".index file beside it)")


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
                raise MissingFileError(f"--init model not found: {path}")
            import keras_mnv2.detection.losses  # noqa: F401  (losses a compiled model names)

            source = keras.saving.load_model(path, compile=False)
        elif is_official_path(path) or os.path.isdir(path):
            source = load(path)
        else:
            raise InputError(f"{path}: expected a .keras model, a .tflite file or a TF "
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
        raise InputError(f"no layer of {model.name!r} matches {source.name!r} in name and shape")
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
