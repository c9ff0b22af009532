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

Upsampling convention: bilinear with half-pixel centres (``tf.image.resize``, TFLite
RESIZE_BILINEAR with half_pixel_centers), not the reference DeepLab's ``align_corners=True``
(for which 513 = 32 * 16 + 1 was chosen). Keras 3, tf_keras and TFLite all agree on it; the two
conventions differ by under half a feature-map pixel, and a model is trained with its own. When the
input side is an exact multiple of the feature side (e.g. 512 at OS16) the upsampling is an
``UpSampling2D`` (which TFMOT's default 8-bit scheme supports), otherwise (513 -> 33) a
``Resizing`` layer; both compute the same half-pixel bilinear resize.

The model is one flat functional graph from the image to the logits (no nested model), with
keras.applications layer names in the backbone, so ImageNet weights, ``copy_weights`` between the
Keras 3 model and its tf_keras twin, and TFMOT's ``quantize_model`` all see plain layers.
"""

from keras_mnv2.blocks import BN_EPSILON, BN_MOMENTUM, make_divisible
from keras_mnv2.checks import image_shape, integer, real
from keras_mnv2.frameworks import get_keras
from keras_mnv2.mobilenet_v2 import MIN_INPUT_SIZE, MobileNetV2
from keras_mnv2.record import functional, records_arguments

FEATURE_TAP = "block_16_project_BN"
HEAD_DEPTH = 256
DEEPLAB_OUTPUT_STRIDES = (8, 16)
_BASE_RATES = (6, 12, 18)  # at output stride 16 (DeepLabv3 section 3.3)
HEAD_PREFIXES = ("image_pooling", "aspp", "concat", "logits")


def deeplab_atrous_rates(output_stride):
    """The ASPP atrous rates: (6, 12, 18) at output stride 16, (12, 24, 36) at 8."""
    if output_stride not in DEEPLAB_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES}, got {output_stride!r}"
        )
    return tuple(rate * 16 // output_stride for rate in _BASE_RATES)


def _validate(num_classes, alpha, input_shape, output_stride, aspp, dropout_rate, bn_momentum):
    """Checks the arguments; returns (num_classes, alpha, input_shape, dropout_rate,
    bn_momentum) as Python numbers (numpy scalars accepted)."""
    num_classes = integer(num_classes, "num_classes", minimum=1)
    alpha = real(alpha, "alpha", minimum=0, low_open=True)
    if output_stride not in DEEPLAB_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES}, got {output_stride!r}"
        )
    if not isinstance(aspp, bool):
        raise ValueError(f"aspp must be True or False, got {aspp!r}")
    dropout_rate = real(dropout_rate, "dropout_rate", 0, 1, high_open=True)
    bn_momentum = real(bn_momentum, "bn_momentum", 0, 1)
    if input_shape is not None and not isinstance(input_shape, (str, bytes)) and hasattr(
            input_shape, "__len__") and len(input_shape) == 3 and None in tuple(input_shape):
        raise ValueError(
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


def _bilinear_upsample(keras, x, size, name, dtype=None):
    """Half-pixel bilinear resize of ``x`` to the static ``size`` (see the module docstring)."""
    layers = keras.layers
    height, width = size
    in_height, in_width = x.shape[1], x.shape[2]
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

    Returns a model from images [B, H, W, C] to float32 per-pixel logits
    [B, H, W, num_classes] (no softmax).
    """
    num_classes, alpha, input_shape, dropout_rate, bn_momentum = _validate(
        num_classes, alpha, input_shape, output_stride, aspp, dropout_rate, bn_momentum)
    keras = get_keras(framework)
    layers = keras.layers

    inputs = layers.Input(shape=input_shape, name="image")
    backbone = MobileNetV2(alpha=alpha, include_top=False, weights=backbone_weights,
                           input_tensor=inputs, output_stride=output_stride,
                           framework=framework, bn_momentum=bn_momentum,
                           expansion_splits=expansion_splits)
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
    outputs = _bilinear_upsample(keras, x, input_shape[:2], "logits_upsample", dtype="float32")

    if name is None:
        name = f"deeplabv3_mobilenetv2_{alpha:0.2f}_{input_shape[0]}_os{output_stride}"
    return functional(keras, inputs, outputs, name=name)


def head_layer_names(model):
    """Names of the DeepLabv3 head layers (everything after the backbone tap)."""
    return [layer.name for layer in model.layers if layer.name.startswith(HEAD_PREFIXES)]


def backbone_channels(alpha):
    """Channels of the ``block_16_project_BN`` tap for width multiplier ``alpha``."""
    return make_divisible(int(320 * alpha))
