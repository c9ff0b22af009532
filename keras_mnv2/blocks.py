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
    for layer in conv_bn_layers(keras, filters, kernel_size, name, bn_name, strides, relu_name,
                                bn_momentum):
        x = layer(x)
    return x


def conv_bn_layers(keras, filters, kernel_size, name, bn_name, strides=1, relu_name=None,
                   bn_momentum=BN_MOMENTUM):
    """The layers of ``conv_bn``, created but not called."""
    layers = keras.layers
    conv_layers = [
        layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name
        ),
        layers.BatchNormalization(epsilon=BN_EPSILON, momentum=bn_momentum, name=bn_name),
    ]
    if relu_name:
        conv_layers.append(layers.ReLU(6.0, name=relu_name))
    return conv_layers


def split_sizes(channels, splits):
    """Widths of ``splits`` channel groups of ``channels``, as equal as possible (larger first).

    ``splits`` is capped at ``channels`` (a group holds at least one channel).
    """
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits must be an integer >= 1, got {splits!r}")
    splits = min(splits, channels)
    base, extra = divmod(channels, splits)
    return tuple(base + (1 if i < extra else 0) for i in range(splits))


def inverted_residual(keras, x, expansion, filters, stride, block_id, dilation=1,
                      bn_momentum=BN_MOMENTUM, splits=1, stem=(), expansion_divisor=None):
    """Inverted residual block: expand 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6,
    linear projection 1x1 + BN, and a residual connection when the shapes allow it.

    ``filters`` is the number of output channels, already scaled by the width multiplier.
    Block 0 has no expansion layer and is named ``expanded_conv_`` as in keras.applications.
    With ``splits`` > 1 the block is computed over channel groups of the expanded tensor, one
    group at a time (paper section 5.1; see ``split_branch``). ``stem`` (optional) holds layers,
    created but not called, that make the block's input from ``x`` (MobileNetV2's Conv1, its BN
    and ReLU6, before block 0): they run first, and with ``splits`` > 1 they take the place of
    the missing expansion in the split (the paper's Table 3 note on the first layer).
    ``expansion_divisor`` (optional) rounds the expanded width with ``make_divisible``, as
    TF-slim's ``expand_input_by_factor`` does (divisor 8); None keeps ``expansion * in_channels``
    (keras.applications; the same whenever the input width is a multiple of 8).
    """
    layers = keras.layers
    if stem and (splits == 1 or block_id):
        for layer in stem:
            x = layer(x)
        stem = ()
    in_channels = stem[0].filters if stem else x.shape[-1]
    if stem and (stride != 1 or in_channels == filters):
        raise ValueError("a split stem needs a stride-1 block without a residual connection")
    inputs = x
    expanded = expansion * in_channels
    if expansion_divisor is not None:
        expanded = make_divisible(expanded, expansion_divisor)
    prefix = f"block_{block_id}_"
    branch = []  # the expand .. project layers, created here and called below
    if block_id:
        branch += [
            layers.Conv2D(
                expanded, 1, padding="same", use_bias=False, name=prefix + "expand"
            ),
            layers.BatchNormalization(
                epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "expand_BN"
            ),
            layers.ReLU(6.0, name=prefix + "expand_relu"),
        ]
    else:
        prefix = "expanded_conv_"

    if stride == 2:
        branch.append(layers.ZeroPadding2D(padding=correct_pad(x.shape[1:3]), name=prefix + "pad"))
    branch += [
        layers.DepthwiseConv2D(
            3,
            strides=stride,
            dilation_rate=dilation,
            padding="same" if stride == 1 else "valid",
            use_bias=False,
            name=prefix + "depthwise",
        ),
        layers.BatchNormalization(
            epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "depthwise_BN"
        ),
        layers.ReLU(6.0, name=prefix + "depthwise_relu"),
        # Linear bottleneck: no non-linearity after the projection (paper section 3.2).
        layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project"),
    ]
    if stem:
        x = split_branch(keras, x, list(stem) + branch, splits)
    elif block_id and splits > 1:
        x = split_branch(keras, x, branch, splits)
    else:
        for layer in branch:
            x = layer(x)
    x = layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=bn_momentum, name=prefix + "project_BN"
    )(x)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


def split_branch(keras, x, branch, splits):
    """F(x) = sum_i A_i(N(B_i(x))) over channel groups of the expanded tensor (paper sec. 5.1).

    ``branch`` holds the unsplit layers from the expansion to the 1x1 projection, in order
    (expand conv, its BN and ReLU6, optional ZeroPadding2D, depthwise conv, its BN and ReLU6,
    projection conv; for block 0 the expansion is the stem's Conv1); they serve as templates and
    are not called. Group ``i`` gets copies of them named ``<name>_s<i>``: the expansion makes
    only the group's channels, the middle layers are per channel, and the group's projection
    maps its channels to all output channels. The partial projections are summed pairwise as
    they come (``<prefix>project_sum_s<i>``), so a sequential runtime keeps one expanded group
    and a running sum alive at a time. The projection's BN follows the sum (outside this
    function): BN is affine per channel, so BN(sum) keeps the original BN weights. Returns the
    sum.
    """
    expand, project = branch[0], branch[-1]
    if type(expand).__name__ != "Conv2D" or type(project).__name__ != "Conv2D":
        raise ValueError(
            "split_branch needs a branch from a Conv2D expansion to a Conv2D projection, got "
            f"{[layer.name for layer in branch]}"
        )
    sizes = split_sizes(expand.filters, splits)
    prefix = project.name[: -len("project")] if project.name.endswith("project") else \
        project.name + "_"
    total = None
    for i, width in enumerate(sizes):
        y = x
        for layer in branch:
            overrides = {"name": f"{layer.name}_s{i}"}
            if layer is expand:
                overrides["filters"] = width
            y = clone_layer(layer, **overrides)(y)
        total = y if total is None else \
            keras.layers.Add(name=f"{prefix}project_sum_s{i}")([total, y])
    return total


def clone_layer(layer, **overrides):
    """A new, unbuilt layer of the same class and config as ``layer``, with ``overrides``."""
    config = layer.get_config()
    config.update(overrides)
    return type(layer).from_config(config)
