"""Mobile DeepLabv3 on MobileNetV2 (paper section 6.3, Table 7; Chen et al. 2017, DeepLabv3).

The heads sit on the 320-channel output of the last inverted residual (``block_16_project_BN``,
the paper's "second last feature map"; the 1280-channel ``Conv_1`` is not used), with the backbone
run at output stride 16 or 8 by atrous convolution (``MobileNetV2(output_stride=...)``).

Head (DeepLabv3 section 3.3, "ASPP"), every conv 256 wide with BN + ReLU:
  image pooling: global average pool -> 1x1 conv -> back to the feature size (a 1x1 map, so the
      nearest-neighbour upsampling used is exactly the bilinear one: every pixel gets the value);
  ``aspp0``: 1x1 conv;
  ``aspp1..3`` (with ``aspp=True``): 3x3 atrous convs at rates 6, 12, 18 (OS16; doubled at OS8);
then concatenation -> 1x1 projection -> dropout -> 1x1 logits conv (with bias) -> bilinear
upsampling to the input size.

Upsampling convention: bilinear with ``align_corners=True`` by default, the convention of every
official DeepLab model (for which 513 = 32 * 16 + 1 was chosen: corner pixels of the 33x33 logits
land exactly on corner pixels of the image). It is a ``BilinearResize`` layer (below), which runs
``tf.compat.v1.image.resize_bilinear`` on the TensorFlow backend (TFLite: RESIZE_BILINEAR with
align_corners=true, in float and int8) and builds in the tf_keras twin. ``align_corners=False``
gives half-pixel centres (``tf.image.resize``, TFLite RESIZE_BILINEAR with half_pixel_centers):
when the input side is an exact multiple of the feature side (e.g. 512 at OS16) an
``UpSampling2D`` (which TFMOT's default 8-bit scheme supports), otherwise (513 -> 33) a
``Resizing`` layer; both compute the same half-pixel bilinear resize. The two conventions differ
by under half a feature-map pixel, and a model is trained with its own (on the official PASCAL
model the wrong one moves 1-2% of the mask pixels).

The model is one flat functional graph from the image to the logits (no nested model), with
keras.applications layer names in the backbone, so ImageNet weights, ``copy_weights`` between the
Keras 3 model and its tf_keras twin, and TFMOT's ``quantize_model`` all see plain layers.
"""

import numpy as np

from keras_mnv2.blocks import BN_EPSILON, BN_MOMENTUM
from keras_mnv2.checks import image_shape, integer, real
from keras_mnv2.errors import InputError
from keras_mnv2.frameworks import get_keras
from keras_mnv2.mobilenet_v2 import MIN_INPUT_SIZE, MobileNetV2, channel_rounding
from keras_mnv2.record import functional, records_arguments

FEATURE_TAP = "block_16_project_BN"
HEAD_DEPTH = 256
DEEPLAB_OUTPUT_STRIDES = (8, 16)
_BASE_RATES = (6, 12, 18)  # at output stride 16 (DeepLabv3 section 3.3)
HEAD_PREFIXES = ("image_pooling", "aspp", "concat", "logits")


def deeplab_atrous_rates(output_stride):
    """The ASPP atrous rates: (6, 12, 18) at output stride 16, (12, 24, 36) at 8."""
    if output_stride not in DEEPLAB_OUTPUT_STRIDES:
        raise InputError(
            f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES}, got {output_stride!r}"
        )
    return tuple(rate * 16 // output_stride for rate in _BASE_RATES)


def resize_weights(in_size, out_size, align_corners):
    """For one axis of a bilinear resize: (lower index, upper index, upper weight) per output
    position, as numpy arrays. ``align_corners`` maps corner pixels onto corner pixels
    (src = dst * (in - 1) / (out - 1)); otherwise half-pixel centres
    (src = (dst + 0.5) * in / out - 0.5, clamped at 0)."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * in_size / out_size - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype("int32"), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (src - lower).astype("float32")


def bilinear_resize_ops(ops, x, size, align_corners):
    """Bilinear resize of a channels-last batch with ``keras.ops`` only (any backend): two
    separable gathers and blends. The fallback of ``BilinearResize`` off TensorFlow."""
    for axis, (in_size, out_size) in ((1, (x.shape[1], size[0])), (2, (x.shape[2], size[1]))):
        lower, upper, frac = resize_weights(int(in_size), int(out_size), align_corners)
        shape = [1, 1, 1, 1]
        shape[axis] = int(out_size)
        frac = ops.reshape(ops.convert_to_tensor(frac, dtype=x.dtype), shape)
        low = ops.take(x, ops.convert_to_tensor(lower), axis=axis)
        high = ops.take(x, ops.convert_to_tensor(upper), axis=axis)
        x = low + (high - low) * frac
    return x


_RESIZE_CLASSES = {}


def bilinear_resize_class(framework="keras"):
    """The ``BilinearResize`` layer class of ``framework`` ("keras" or "tf_keras"), registered
    for serialization as ``keras_mnv2>BilinearResize``.

    ``BilinearResize(height, width, align_corners=True)`` resizes channels-last images to a
    static size; unlike Keras' ``Resizing`` it has the ``align_corners`` convention of the
    official DeepLab models. On TensorFlow (and in tf_keras) it is
    ``tf.compat.v1.image.resize_bilinear`` (one TFLite RESIZE_BILINEAR op); on other Keras 3
    backends ``bilinear_resize_ops``.
    """
    if framework in _RESIZE_CLASSES:
        return _RESIZE_CLASSES[framework]
    keras = get_keras(framework)
    on_tf_keras = framework == "tf_keras"

    class BilinearResize(keras.layers.Layer):
        def __init__(self, height, width, align_corners=True, **kwargs):
            super().__init__(**kwargs)
            self.height, self.width = int(height), int(width)
            self.align_corners = bool(align_corners)

        def call(self, inputs):
            size = (self.height, self.width)
            if on_tf_keras or keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                resized = tf.compat.v1.image.resize_bilinear(
                    inputs, size, align_corners=self.align_corners,
                    half_pixel_centers=not self.align_corners)
                return tf.cast(resized, inputs.dtype)
            return bilinear_resize_ops(keras.ops, inputs, size, self.align_corners)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.height, self.width, input_shape[-1])

        def get_config(self):
            config = super().get_config()
            config.update(height=self.height, width=self.width,
                          align_corners=self.align_corners)
            return config

    if on_tf_keras:
        register = keras.utils.register_keras_serializable(package="keras_mnv2")
    else:
        register = keras.saving.register_keras_serializable(package="keras_mnv2")
    _RESIZE_CLASSES[framework] = register(BilinearResize)
    return _RESIZE_CLASSES[framework]


BilinearResize = bilinear_resize_class("keras")


def _validate(num_classes, alpha, input_shape, output_stride, aspp, dropout_rate, bn_momentum):
    """Checks the arguments; returns (num_classes, alpha, input_shape, dropout_rate,
    bn_momentum) as Python numbers (numpy scalars accepted)."""
    num_classes = integer(num_classes, "num_classes", minimum=1)
    alpha = real(alpha, "alpha", minimum=0, low_open=True)
    if output_stride not in DEEPLAB_OUTPUT_STRIDES:
        raise InputError(
            f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES}, got {output_stride!r}"
        )
    if not isinstance(aspp, bool):
        raise InputError(f"aspp must be True or False, got {aspp!r}")
    dropout_rate = real(dropout_rate, "dropout_rate", 0, 1, high_open=True)
    bn_momentum = real(bn_momentum, "bn_momentum", 0, 1)
    if input_shape is not None and not isinstance(input_shape, (str, bytes)) and hasattr(
            input_shape, "__len__") and len(input_shape) == 3 and None in tuple(input_shape):
        raise InputError(
            "DeepLabV3 needs a static input size (the image pooling and the final "
            f"upsampling are built for it); input_shape has a None side: {input_shape!r}"
        )
    input_shape = image_shape(input_shape, MIN_INPUT_SIZE, static=True)
    return num_classes, alpha, input_shape, dropout_rate, bn_momentum


def _conv_bn_relu(keras, x, kernel_size, name, dilation=1, bn_momentum=BN_MOMENTUM):
    """Conv (256, no bias) + BN + ReLU, named ``name``, ``name_BN``, ``name_relu``."""
    layers = keras.layers
    x = layers.Conv2D(HEAD_DEPTH, kernel_size, padding="same", dilation_rate=dilation,
                      use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=name + "_BN")(x)
    return layers.ReLU(name=name + "_relu")(x)


def _bilinear_upsample(keras, x, size, name, dtype=None, align_corners=False,
                       framework="keras"):
    """Bilinear resize of ``x`` to the static ``size`` (see the module docstring)."""
    layers = keras.layers
    height, width = size
    in_height, in_width = x.shape[1], x.shape[2]
    if align_corners:
        return bilinear_resize_class(framework)(height, width, align_corners=True, name=name,
                                                dtype=dtype)(x)
    if height % in_height == 0 and width % in_width == 0:
        return layers.UpSampling2D((height // in_height, width // in_width),
                                   interpolation="bilinear", name=name, dtype=dtype)(x)
    return layers.Resizing(height, width, interpolation="bilinear", name=name, dtype=dtype)(x)


@records_arguments
def DeepLabV3(
    num_classes=21,
    alpha=1.0,
    input_shape=(513, 513, 3),
    output_stride=16,
    aspp=True,
    backbone_weights=None,
    dropout_rate=0.1,
    name=None,
    framework="keras",
    bn_momentum=BN_MOMENTUM,
    expansion_splits=1,
    align_corners=True,
    divisible_by=8,
    min_depth=None,
    weights=None,
):
    """Builds Mobile DeepLabv3 (MobileNetV2 backbone); returns a functional model.

    Args:
        num_classes: number of classes (21 for PASCAL VOC, background included).
        alpha: width multiplier of the backbone (the head stays 256 wide, as in the paper).
        input_shape: static (height, width, channels), sides of at least 32 px.
        output_stride: 16 or 8 (atrous backbone; the ASPP rates follow, see
            ``deeplab_atrous_rates``).
        aspp: with the three 3x3 atrous branches (Table 7 "ASPP"); False keeps only the image
            pooling and 1x1 branches.
        backbone_weights: None (random), "imagenet" or a weights file, passed to ``MobileNetV2``.
        dropout_rate: dropout after the projection (DeepLab: keep probability 0.9); 0 leaves it
            out.
        name: model name; defaults to ``deeplabv3_mobilenetv2_{alpha}_{rows}_os{output_stride}``.
        framework: "keras" (Keras 3) or "tf_keras" (the TFMOT twin; same layer names).
        bn_momentum: batch-norm momentum in the backbone and the head.
        expansion_splits: split-expansion inverted residuals in the backbone (paper section
            5.1; see ``MobileNetV2``); 1 = the plain graph.
        align_corners: the logits upsampling convention: True (the official DeepLab models',
            the default) or False (half-pixel centres); see the module docstring.
        divisible_by, min_depth: the backbone's channel rounding (see ``MobileNetV2``). The
            official DeepLab code uses 8 at depth multiplier 1 and ``divisible_by=1,
            min_depth=1`` otherwise (its dm 0.5 PASCAL model has widths 12 and 72).
        weights: None, or the path of weights for the whole model: a .keras / .weights.h5
            file, an official .tflite file or a TF1 checkpoint (``keras_mnv2.convert``).

    Returns a model from images [B, H, W, C] to float32 per-pixel logits
    [B, H, W, num_classes] (no softmax).
    """
    num_classes, alpha, input_shape, dropout_rate, bn_momentum = _validate(
        num_classes, alpha, input_shape, output_stride, aspp, dropout_rate, bn_momentum)
    if not isinstance(align_corners, bool):
        raise InputError(f"align_corners must be True or False, got {align_corners!r}")
    keras = get_keras(framework)
    layers = keras.layers

    inputs = layers.Input(shape=input_shape, name="image")
    backbone = MobileNetV2(alpha=alpha, include_top=False, weights=backbone_weights,
                           input_tensor=inputs, output_stride=output_stride,
                           framework=framework, bn_momentum=bn_momentum,
                           expansion_splits=expansion_splits, divisible_by=divisible_by,
                           min_depth=min_depth)
    features = backbone.get_layer(FEATURE_TAP).output
    feature_size = tuple(int(d) for d in features.shape[1:3])

    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling_pool")(features)
    pooled = _conv_bn_relu(keras, pooled, 1, "image_pooling", bn_momentum=bn_momentum)
    branches = [layers.UpSampling2D(feature_size, interpolation="nearest",
                                    name="image_pooling_upsample")(pooled)]
    branches.append(_conv_bn_relu(keras, features, 1, "aspp0", bn_momentum=bn_momentum))
    if aspp:
        for i, rate in enumerate(deeplab_atrous_rates(output_stride), start=1):
            branches.append(_conv_bn_relu(keras, features, 3, f"aspp{i}", dilation=rate,
                                          bn_momentum=bn_momentum))
    x = layers.Concatenate(name="concat")(branches)
    x = _conv_bn_relu(keras, x, 1, "concat_projection", bn_momentum=bn_momentum)
    if dropout_rate:
        x = layers.Dropout(dropout_rate, name="concat_projection_dropout")(x)
    x = layers.Conv2D(num_classes, 1, name="logits")(x)
    outputs = _bilinear_upsample(keras, x, input_shape[:2], "logits_upsample", dtype="float32",
                                 align_corners=align_corners, framework=framework)

    if name is None:
        name = f"deeplabv3_mobilenetv2_{alpha:0.2f}_{input_shape[0]}_os{output_stride}"
    model = functional(keras, inputs, outputs, name=name)
    if weights is not None:
        from keras_mnv2.weight_files import load_weights_file

        load_weights_file(model, weights)
    return model


def head_layer_names(model):
    """Names of the DeepLabv3 head layers (everything after the backbone tap)."""
    return [layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIXES)]


def backbone_channels(alpha, divisible_by=8, min_depth=None):
    """Channels of the ``block_16_project_BN`` tap for width multiplier ``alpha``."""
    return channel_rounding(alpha, divisible_by, min_depth)(320)
