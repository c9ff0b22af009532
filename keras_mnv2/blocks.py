"""The shared building blocks: the inverted residual with linear bottleneck (paper section 3.3).

Layer names follow keras.applications.MobileNetV2 (``block_{i}_expand``, ``block_{i}_depthwise``,
``block_{i}_project`` and their ``_BN`` / ``_relu`` siblings) so that the official weight files load.
Every function takes the Keras module to build with (``keras`` or ``tf_keras``).
"""

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999


def make_divisible(value, divisor=8, min_value=None):
    """Rounds a channel count to a multiple of ``divisor`` (the paper's reference code rule).

    The result never drops more than 10% below ``value``.
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def correct_pad(size, kernel_size=3):
    """Zero padding that makes a stride-2 'valid' convolution equal TF's 'same' (and TFLite's).

    ``size`` is the (height, width) of the input; an unknown (None) side is treated as even.
    TF 'same' puts the extra row/column at the bottom/right when the input side is even.
    """
    half = kernel_size // 2
    return tuple((half - (1 if dim is None else 1 - dim % 2), half) for dim in size)


def conv_bn(keras, x, filters, kernel_size, name, bn_name, strides=1, relu_name=None,
            bn_momentum=BN_MOMENTUM):
    """Conv2D (no bias) + BatchNorm (+ ReLU6 when ``relu_name`` is given)."""
    layers = keras.layers
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=bn_name)(x)
    if relu_name:
        x = layers.ReLU(6.0, name=relu_name)(x)
    return x


def inverted_residual(keras, x, expansion, filters, stride, block_id, dilation=1,
                      bn_momentum=BN_MOMENTUM):
    """Inverted residual block: expand 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6,
    linear projection 1x1 + BN, and a residual connection when the shapes allow it.

    ``filters`` is the number of output channels, already scaled by the width multiplier.
    Block 0 has no expansion layer and is named ``expanded_conv_`` as in keras.applications.
    """
    layers = keras.layers
    in_channels = x.shape[-1]
    inputs = x
    prefix = f"block_{block_id}_"
    if block_id:
        x = layers.Conv2D(
            expansion * in_channels, 1, padding="same", use_bias=False, name=prefix + "expand"
        )(x)
        x = layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "expand_BN"
        )(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    else:
        prefix = "expanded_conv_"

    if stride == 2:
        x = layers.ZeroPadding2D(padding=correct_pad(x.shape[1:3]), name=prefix + "pad")(x)
    x = layers.DepthwiseConv2D(
        3,
        strides=stride,
        dilation_rate=dilation,
        padding="same" if stride == 1 else "valid",
        use_bias=False,
        name=prefix + "depthwise",
    )(x)
    x = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "depthwise_BN"
    )(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)

    # Linear bottleneck: no non-linearity after the projection (paper section 3.2).
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "project_BN"
    )(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x
