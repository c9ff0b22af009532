"""SSDLite on MobileNetV2 (paper section 6.2, Tables 5 and 6).

The backbone taps ``block_13_expand_relu`` (stride 16) and ``out_relu`` (stride 32); four extra
layers (1x1 conv -> 3x3 depthwise stride 2 -> 1x1 conv) add strides 64 to 512; every predictor is a
3x3 depthwise conv + BN + ReLU6 followed by a 1x1 conv ("SSDLite": all regular convolutions of the
SSD prediction layers replaced by separable ones). The model returns raw outputs for training:
``{"boxes": [B, N, 4] box encodings, "classes": [B, N, num_classes + 1] logits}`` (index 0 is
background); decoding and NMS live in ``keras_mnv2.detection.postprocess``.
"""

import math

import numpy as np

from keras_mnv2.detection.anchors import num_boxes_per_layer, ssd_anchors
from keras_mnv2.blocks import BN_EPSILON, BN_MOMENTUM, make_divisible
from keras_mnv2.frameworks import get_keras
from keras_mnv2.mobilenet_v2 import MobileNetV2, splits_per_block

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
    outputs line up with; ``ssdlite_anchors(input_size, ...)`` recomputes them.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(input_size, int) or input_size < 64:
        raise ValueError(f"input_size must be an integer >= 64 (px), got {input_size!r}")
    if len(extra_depths) != len(EXTRA_DEPTHS):
        raise ValueError(
            f"extra_depths must have {len(EXTRA_DEPTHS)} entries (six feature maps in all), "
            f"got {extra_depths!r}"
        )
    if background_prior is not None and not 0 < background_prior < 1:
        raise ValueError(f"background_prior must be in (0, 1) or None, got {background_prior!r}")
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
    outputs = {
        "boxes": layers.Concatenate(axis=1, name="boxes")(box_outputs),
        "classes": layers.Concatenate(axis=1, name="classes")(class_outputs),
    }
    model = keras.Model(backbone.inputs, outputs,
                        name=name or f"ssdlite_mobilenetv2_{alpha:0.2f}_{input_size}")
    sizes = [int(f.shape[1]) for f in features]
    if sizes != feature_map_sizes(input_size):  # guards the anchor layout against drift
        raise AssertionError(f"feature maps {sizes} != {feature_map_sizes(input_size)}")
    model.anchors = ssd_anchors(sizes, min_scale=min_scale, max_scale=max_scale,
                                aspect_ratios=aspect_ratios)
    if model.anchors.shape[0] != outputs["boxes"].shape[1]:
        raise AssertionError("anchor count does not match the predictor outputs")
    if weights is not None:
        from keras_mnv2.mobilenet_v2 import load_weights_file

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
