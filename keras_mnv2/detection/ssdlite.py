"""SSDLite on MobileNetV2 (paper section 6.2, Tables 5 and 6).

The backbone taps ``block_13_expand_relu`` (stride 16) and ``out_relu`` (stride 32); four extra
layers (1x1 conv -> 3x3 depthwise stride 2 -> 1x1 conv) add strides 64 to 512; every predictor is a
3x3 depthwise conv + BN + ReLU6 followed by a 1x1 conv ("SSDLite": all regular convolutions of the
SSD prediction layers replaced by separable ones). The model returns raw outputs for training:
``{"boxes": [B, N, 4] box encodings, "classes": [B, N, num_classes + 1] logits}`` (index 0 is
background); decoding and NMS live in ``keras_mnv2.detection.postprocess``.
"""

import math

import keras
import numpy as np

from keras_mnv2.detection.anchors import num_boxes_per_layer, ssd_anchors
from keras_mnv2.blocks import BN_EPSILON, BN_MOMENTUM, make_divisible
from keras_mnv2.checks import integer, real
from keras_mnv2.errors import InputError, NoAnchorsError
from keras_mnv2.frameworks import get_keras
from keras_mnv2.mobilenet_v2 import MobileNetV2, splits_per_block
from keras_mnv2.record import builder_config, functional, records_arguments

FEATURE_TAPS = ("block_13_expand_relu", "out_relu")
EXTRA_DEPTHS = (512, 256, 256, 128)
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
MIN_EXTRA_DEPTH = 16


def feature_map_sizes(input_size, num_extra_layers=len(EXTRA_DEPTHS)):
    """Spatial sizes of the six SSDLite feature maps for a square input (320 -> 20, 10, 5, 3, 2, 1).

    Uses the 'same'-padding rule ceil(size / 2) for every stride-2 layer.
    """
    size = input_size
    sizes = []
    for stride_2_layers in (4, 1) + (1,) * num_extra_layers:
        for _ in range(stride_2_layers):
            size = math.ceil(size / 2)
        sizes.append(size)
    return sizes


def ssdlite_anchors(input_size=320, min_scale=0.2, max_scale=0.95, aspect_ratios=ASPECT_RATIOS):
    """The anchors (cy, cx, h, w; normalized) an SSDLite of this input size is built with."""
    return ssd_anchors(feature_map_sizes(input_size), min_scale=min_scale, max_scale=max_scale,
                       aspect_ratios=aspect_ratios)


def anchors_from_arguments(arguments):
    """The anchors of an SSDLite built with ``arguments`` (its record: a dict of ``SSDLite``'s
    keyword arguments; the anchor settings missing from it take their defaults)."""
    keys = ("min_scale", "max_scale", "aspect_ratios")
    return ssdlite_anchors(int(arguments["input_size"]),
                           **{key: arguments[key] for key in keys if key in arguments})


def model_anchors(model):
    """The anchors (np.float32 [N, 4], cy/cx/h/w) ``model``'s outputs line up with:
    ``model.anchors`` where it has them (an SSDLite, its tf_keras twin, its QAT, split or folded
    copy, any of them reloaded from a ``.keras`` file), else the ones its SSDLite builder record
    gives. Raises ``NoAnchorsError`` for a model with neither, or with anchors that are not an
    [N, 4] table."""
    anchors = getattr(model, "anchors", None)
    if anchors is None:
        found = builder_config(model)
        if found is None or found[0] is not SSDLite:
            raise NoAnchorsError(
                f"model {model.name!r} carries no anchors (no anchors attribute and no SSDLite "
                "builder record): pass the anchors (keras_mnv2.ssdlite_anchors(input_size, ...))")
        anchors = anchors_from_arguments(found[1])
    anchors = np.asarray(anchors, np.float32)
    if anchors.ndim != 2 or anchors.shape[1] != 4:
        raise NoAnchorsError(f"model {model.name!r} has anchors of shape {anchors.shape}, not an "
                             "[N, 4] table (cy, cx, h, w)")
    return anchors


def _bn_relu6(keras, x, name, bn_momentum=BN_MOMENTUM):
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum,
                                        name=name + "_BN")(x)
    return keras.layers.ReLU(6.0, name=name + "_relu")(x)


def extra_layer(keras, x, depth, index, bn_momentum=BN_MOMENTUM):
    """1x1 conv (depth / 2) -> 3x3 depthwise stride 2 -> 1x1 conv (depth), each with BN + ReLU6."""
    layers = keras.layers
    prefix = f"extra_{index}_"
    x = layers.Conv2D(depth // 2, 1, use_bias=False, name=prefix + "reduce")(x)
    x = _bn_relu6(keras, x, prefix + "reduce", bn_momentum)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                               name=prefix + "depthwise")(x)
    x = _bn_relu6(keras, x, prefix + "depthwise", bn_momentum)
    x = layers.Conv2D(depth, 1, use_bias=False, name=prefix + "project")(x)
    return _bn_relu6(keras, x, prefix + "project", bn_momentum)


def predictor(keras, x, outputs_per_box, num_boxes, name, bias_initializer="zeros",
              bn_momentum=BN_MOMENTUM):
    """SSDLite predictor: 3x3 depthwise + BN + ReLU6, then a 1x1 conv, reshaped to
    [B, H * W * num_boxes, outputs_per_box] (anchor order: row, column, box)."""
    layers = keras.layers
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=name + "_depthwise")(x)
    y = _bn_relu6(keras, y, name + "_depthwise", bn_momentum)
    y = layers.Conv2D(num_boxes * outputs_per_box, 1, bias_initializer=bias_initializer,
                      name=name)(y)
    h, w = y.shape[1], y.shape[2]
    return layers.Reshape((h * w * num_boxes, outputs_per_box), name=name + "_reshape")(y)


@records_arguments
def SSDLite(
    num_classes,
    alpha=1.0,
    input_size=320,
    backbone_weights=None,
    min_scale=0.2,
    max_scale=0.95,
    aspect_ratios=ASPECT_RATIOS,
    extra_depths=EXTRA_DEPTHS,
    background_prior=0.99,
    name=None,
    framework="keras",
    bn_momentum=BN_MOMENTUM,
    expansion_splits=1,
    weights=None,
):
    """Builds SSDLite-MobileNetV2; returns a functional model with raw outputs.

    Args:
        num_classes: number of object classes (without background); logits have num_classes + 1.
        alpha: width multiplier of the backbone and of the extra layers (min depth 16).
        input_size: side of the square input (at least 64 px).
        backbone_weights: None, "imagenet" or a path, passed to ``MobileNetV2``.
        min_scale, max_scale, aspect_ratios: the SSD anchor generator's settings.
        extra_depths: output depths of the extra layers (paper: 512, 256, 256, 128).
        background_prior: initial background probability of the class logits' bias (helps
            training from scratch; None leaves the bias at zero).
        framework: "keras" or "tf_keras" (the QAT twin).
        bn_momentum: batch-norm momentum everywhere (lower it for short training runs).
        expansion_splits: passed to ``MobileNetV2`` (memory-efficient inference, paper section
            5.1); block 13, whose expanded tensor is the stride-16 feature map, stays whole.
        weights: None, or the path of weights for the whole model: a .keras / .weights.h5
            file, an official .tflite file or a TF1 checkpoint (``keras_mnv2.convert``; e.g.
            ``ssdlite_mobilenet_v2_coco``: ``num_classes=90, input_size=300``).

    The model has ``model.anchors`` (np.float32 [N, 4], cy/cx/h/w normalized), the anchors its
    outputs line up with; ``ssdlite_anchors(input_size, ...)`` recomputes them. The model records
    this call (``keras_mnv2.record``): a ``.keras`` round trip rebuilds it, anchors included.
    ``detector(model)`` is its inference form (decoding and NMS in the graph).
    """
    num_classes = integer(num_classes, "num_classes", minimum=1)
    try:
        input_size = integer(input_size, "input_size", minimum=64)
    except ValueError:
        raise InputError(f"input_size must be an integer >= 64 (px), got {input_size!r}") from None
    alpha = real(alpha, "alpha", minimum=0, low_open=True)
    min_scale = real(min_scale, "min_scale", 0, 1, low_open=True)
    max_scale = real(max_scale, "max_scale", min_scale, 1)
    if isinstance(extra_depths, (str, bytes)) or not hasattr(extra_depths, "__len__") \
            or len(extra_depths) != len(EXTRA_DEPTHS):
        raise InputError(
            f"extra_depths must have {len(EXTRA_DEPTHS)} entries (six feature maps in all), "
            f"got {extra_depths!r}"
        )
    extra_depths = tuple(integer(d, "extra_depths entries", minimum=1) for d in extra_depths)
    if background_prior is not None:
        try:
            background_prior = real(background_prior, "background_prior", 0, 1, True, True)
        except ValueError:
            raise InputError(f"background_prior must be in (0, 1) or None, got "
                             f"{background_prior!r}") from None
    keras = get_keras(framework)
    layers = keras.layers

    backbone = MobileNetV2(alpha=alpha, input_shape=(input_size, input_size, 3),
                           include_top=False, weights=backbone_weights, framework=framework,
                           bn_momentum=bn_momentum,
                           expansion_splits=splits_per_block(expansion_splits, FEATURE_TAPS))
    features = [backbone.get_layer(tap).output for tap in FEATURE_TAPS]
    x = features[-1]
    for index, depth in enumerate(extra_depths, start=1):
        x = extra_layer(keras, x, max(int(depth * alpha), MIN_EXTRA_DEPTH), index, bn_momentum)
        features.append(x)

    boxes_per_layer = num_boxes_per_layer(len(features), aspect_ratios=aspect_ratios)
    box_outputs, class_outputs = [], []
    for i, (feature, num_boxes) in enumerate(zip(features, boxes_per_layer)):
        box_outputs.append(predictor(keras, feature, 4, num_boxes, f"box_predictor_{i}",
                                     bn_momentum=bn_momentum))
        class_bias = "zeros"
        if background_prior is not None:
            class_bias = _class_bias(keras, num_classes, num_boxes, background_prior)
        class_outputs.append(
            predictor(keras, feature, num_classes + 1, num_boxes, f"class_predictor_{i}",
                      bias_initializer=class_bias, bn_momentum=bn_momentum)
        )
    # float32 outputs under a mixed-precision policy (losses and decoding stay float32)
    outputs = {
        "boxes": layers.Concatenate(axis=1, name="boxes", dtype="float32")(box_outputs),
        "classes": layers.Concatenate(axis=1, name="classes", dtype="float32")(class_outputs),
    }
    model = functional(keras, backbone.inputs, outputs,
                       name=name or f"ssdlite_mobilenetv2_{alpha:0.2f}_{input_size}")
    sizes = [int(f.shape[1]) for f in features]
    if sizes != feature_map_sizes(input_size):  # guards the anchor layout against drift
        raise AssertionError(f"feature maps {sizes} != {feature_map_sizes(input_size)}")
    model.anchors = ssd_anchors(sizes, min_scale=min_scale, max_scale=max_scale,
                                aspect_ratios=aspect_ratios)
    if model.anchors.shape[0] != outputs["boxes"].shape[1]:
        raise AssertionError("anchor count does not match the predictor outputs")
    if weights is not None:
        from keras_mnv2.weight_files import load_weights_file

        load_weights_file(model, weights)
    return model


def _class_bias(keras, num_classes, num_boxes, background_prior):
    """Bias giving each anchor p(background) = background_prior and the rest spread evenly."""
    per_box = np.zeros(num_classes + 1, dtype="float32")
    per_box[0] = math.log(background_prior * num_classes / (1 - background_prior))
    return keras.initializers.Constant(np.tile(per_box, num_boxes).tolist())


def head_layer_names(model):
    """Names of the SSDLite layers that are not part of the MobileNetV2 backbone."""
    return [layer.name for layer in model.layers
            if layer.name.startswith(("extra_", "box_predictor_", "class_predictor_"))
            or layer.name in ("boxes", "classes")]


# ----------------------------------------------------------------------------------------------
# The inference form


@keras.saving.register_keras_serializable(package="keras_mnv2")
class DetectionPostProcess(keras.layers.Layer):
    """Box decoding, scoring and NMS in the graph (``keras_mnv2.detection.postprocess``).

    Takes the SSDLite outputs ``{"boxes", "classes"}`` and returns ``decode_detections``' dict.
    The anchors are a non-trainable weight of the layer, so they save and load with the model.
    """

    def __init__(self, num_anchors, score_threshold=0.01, iou_threshold=0.6, max_detections=100,
                 max_detections_per_class=100, mode="softmax", anchors=None, **kwargs):
        super().__init__(**kwargs)
        from keras_mnv2.detection.postprocess import MODES

        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        for key, value in (("max_detections", max_detections),
                           ("max_detections_per_class", max_detections_per_class)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{key} must be an integer >= 1, got {value!r}")
        for key, value in (("score_threshold", score_threshold),
                           ("iou_threshold", iou_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not 0 <= value <= 1:
                raise InputError(f"{key} must be a number in [0, 1], got {value!r}")
        self.num_anchors = int(num_anchors)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.max_detections_per_class = int(max_detections_per_class)
        self.mode = mode
        self.anchors = self.add_weight(shape=(self.num_anchors, 4), initializer="zeros",
                                       trainable=False, name="anchors", dtype="float32")
        if anchors is not None:
            self.anchors.assign(np.asarray(anchors, np.float32))

    def call(self, outputs):
        from keras_mnv2.detection.postprocess import decode_detections

        return decode_detections(
            outputs["boxes"], outputs["classes"], self.anchors,
            score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            max_detections_per_class=self.max_detections_per_class, mode=self.mode)

    def compute_output_spec(self, outputs):
        batch, k = outputs["boxes"].shape[0], self.max_detections
        return {
            "boxes": keras.KerasTensor((batch, k, 4), "float32"),
            "scores": keras.KerasTensor((batch, k), "float32"),
            "classes": keras.KerasTensor((batch, k), "int32"),
            "num_detections": keras.KerasTensor((batch,), "int32"),
        }

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors,
                "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                "max_detections": self.max_detections,
                "max_detections_per_class": self.max_detections_per_class, "mode": self.mode}


def detector(model, score_threshold=0.01, iou_threshold=0.6, max_detections=100,
             max_detections_per_class=100, mode="softmax", name=None):
    """The inference form of an SSDLite: the same layers and weights with decoding and NMS added.

    ``detector(model).predict(images)`` gives detections, and ``detector(model).export(path)``
    serves them from a SavedModel. The outputs are those of ``TFLite_Detection_PostProcess``
    (SSDLite's on-device post-process op): ``boxes`` [B, K, 4] (ymin, xmin, ymax, xmax, in [0, 1]
    of the input), ``classes`` [B, K], ``scores`` [B, K] (descending), ``num_detections`` [B],
    K = ``max_detections``, rows past ``num_detections`` zero. Two conventions differ from the
    op's: ``classes`` are int32 labels 1..C as in the training data (the op's are float, 0-based:
    label - 1), and boxes are clipped to the image. The computation is
    ``keras_mnv2.detection.postprocess.decode_detections`` (the evaluation's path): box coder
    (10, 10, 5, 5) against the model's anchors, ``mode`` "softmax" (background column dropped) or
    "focal" (sigmoid) scores, class-wise NMS at ``iou_threshold`` keeping
    ``max_detections_per_class`` per class and ``max_detections`` in all.

    Args:
        model: a Keras 3 SSDLite (built, trained, or reloaded from a ``.keras`` file); its anchors
            come from the model (``model_anchors``).
        name: the new model's name (default ``<model name>_detector``).

    The detector keeps ``model.labels`` (class names, background first): ``labels[c]`` names a
    box of class ``c``. The layers are shared with ``model`` (no copy): training ``model`` further changes the
    detector too. The result saves to ``.keras`` (the anchors are a weight of its
    ``DetectionPostProcess`` layer). It uses TensorFlow ops: TensorFlow backend only.
    """
    from keras_mnv2.frameworks import framework_of

    if framework_of(model) != "keras":
        raise TypeError(f"model {model.name!r} is a tf_keras model: detector() takes the Keras 3 "
                        "SSDLite (export a tf_keras/QAT model with keras_mnv2.deploy.export)")
    try:
        raw = {key: model.get_layer(key).output for key in ("boxes", "classes")}
    except ValueError as err:
        raise InputError(f"model {model.name!r} is not an SSDLite (no 'boxes' and 'classes' "
                         "output layers)") from err
    anchors = model_anchors(model)
    if anchors.shape != (int(raw["boxes"].shape[1]), 4):
        raise InputError(f"anchors have shape {anchors.shape}, the model predicts for "
                         f"{raw['boxes'].shape[1]} anchors")
    post = DetectionPostProcess(len(anchors), score_threshold=score_threshold,
                                iou_threshold=iou_threshold, max_detections=max_detections,
                                max_detections_per_class=max_detections_per_class, mode=mode,
                                anchors=anchors, name="detections")
    outputs = post(raw)
    inference = keras.Model(model.inputs[0], outputs, name=name or f"{model.name}_detector")
    if getattr(model, "labels", None) is not None:  # class names: labels[classes] names a box
        inference.labels = tuple(model.labels)
    return inference
