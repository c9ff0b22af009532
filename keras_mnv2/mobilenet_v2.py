"""MobileNetV2 (Sandler et al., CVPR 2018): the classifier and backbone builder.

The body is driven by the paper's Table 2 ``[t, c, n, s]`` table and one shared
``inverted_residual`` block; layer names match keras.applications.MobileNetV2 so its official
ImageNet weight files load unchanged.
"""

import os
import re

import numpy as np

from keras_mnv2.blocks import conv_bn, conv_bn_layers, inverted_residual, make_divisible
from keras_mnv2.checks import channels_last, image_shape, integer, real
from keras_mnv2.frameworks import framework_of, get_keras
from keras_mnv2.record import functional, records_arguments

# Paper Table 2: expansion t, output channels c, repeats n, first stride s.
BLOCK_SPECS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
OUTPUT_STRIDES = (8, 16, 32, None)
POOLINGS = (None, "avg", "max")
MIN_INPUT_SIZE = 32
# More groups than this only add layers (the saving of section 5.1 is already near its limit at
# a few groups); 1000 would build for minutes with 21,265 layers.
MAX_EXPANSION_SPLITS = 64


def block_plan(output_stride=None):
    """Expands the spec table into one entry per block: (block_id, t, c, stride, dilation).

    With ``output_stride`` set, the TF-slim rule applies: once the running stride reaches the
    target, a later stride-2 block runs at stride 1 with the current rate, and the rate then
    doubles for the blocks after it (atrous convolution, DeepLabv3 section 3.1).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    plan = []
    current_stride, rate, block_id = 2, 1, 0  # Conv1 has stride 2.
    for t, c, n, s in BLOCK_SPECS:
        for i in range(n):
            stride = s if i == 0 else 1
            if output_stride is not None and current_stride == output_stride:
                layer_stride, layer_rate = 1, rate
                rate *= stride
            else:
                layer_stride, layer_rate = stride, 1
                current_stride *= stride
            plan.append((block_id, t, c, layer_stride, layer_rate))
            block_id += 1
    return tuple(plan)


def splits_per_block(expansion_splits=1, whole=(), argument="expansion_splits"):
    """One expansion split count per block of ``block_plan()`` (paper section 5.1).

    ``expansion_splits`` is an integer k >= 1 (every block) or a sequence with one count per
    block. ``whole`` names layers whose output must exist as one tensor (e.g. the SSDLite tap
    ``block_13_expand_relu``): their blocks keep a count of 1.
    """
    num_blocks = len(block_plan())
    if isinstance(expansion_splits, (int, np.integer)) and not isinstance(expansion_splits, bool):
        counts = [expansion_splits] * num_blocks
    elif isinstance(expansion_splits, (list, tuple)) and len(expansion_splits) == num_blocks:
        counts = list(expansion_splits)
    else:
        counts = [0]
    if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not
           1 <= c <= MAX_EXPANSION_SPLITS for c in counts):
        raise ValueError(
            f"{argument} must be an integer >= 1 or a sequence of {num_blocks} of them (one per "
            f"block), each at most {MAX_EXPANSION_SPLITS}, got {expansion_splits!r}"
        )
    counts = [int(c) for c in counts]
    for name in whole:
        match = re.fullmatch(r"block_(\d+)_(expand|expand_BN|expand_relu|pad|depthwise|"
                             r"depthwise_BN|depthwise_relu|project)", name)
        if match and int(match.group(1)) < num_blocks:
            counts[int(match.group(1))] = 1
        elif re.fullmatch(r"Conv1|bn_Conv1|Conv1_relu|expanded_conv_(depthwise|depthwise_BN|"
                          r"depthwise_relu|project)", name):
            counts[0] = 1
    return tuple(counts)


def _validate(alpha, input_shape, include_top, weights, pooling, classes, output_stride,
              dropout_rate, classifier_activation=None, bn_momentum=0.999, shape_given=True):
    """Checks the arguments; returns (alpha, input_shape, classes, dropout_rate, bn_momentum) as
    Python numbers (numpy scalars accepted). One ValueError naming the argument on a problem."""
    alpha = real(alpha, "alpha", minimum=0, low_open=True)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    classes = integer(classes, "classes", minimum=1)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    dropout_rate = real(dropout_rate, "dropout_rate", 0, 1, high_open=True)
    bn_momentum = real(bn_momentum, "bn_momentum", 0, 1)
    if not isinstance(include_top, (bool, np.bool_)):
        raise ValueError(f"include_top must be True or False, got {include_top!r}")
    if input_shape is not None:
        input_shape = image_shape(input_shape, MIN_INPUT_SIZE)
        if include_top and shape_given and None in input_shape[:2]:
            # as keras.applications: the top is built for one static size
            raise ValueError(
                "include_top=True needs a static input_shape (height and width given), got "
                f"{input_shape!r}; use include_top=False for any input size"
            )
    if weights is not None and include_top and classifier_activation not in ("softmax", None):
        raise ValueError(
            "with pretrained weights and include_top=True, classifier_activation must be "
            f"'softmax' or None (as keras.applications), got {classifier_activation!r}"
        )
    if weights == "imagenet":
        if input_shape is not None and input_shape[-1] != 3:
            raise ValueError(
                f"weights='imagenet' needs 3-channel input, got input_shape={input_shape!r}"
            )
        if alpha not in IMAGENET_ALPHAS:
            raise ValueError(
                f"weights='imagenet' exists only for alpha in {IMAGENET_ALPHAS}, got {alpha!r}"
            )
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000, got {classes!r}"
            )
        if include_top and input_shape is not None and (
            input_shape[0] != input_shape[1] or input_shape[0] not in IMAGENET_SIZES
        ):
            raise ValueError(
                "weights='imagenet' with include_top=True needs a square input_shape with "
                f"side in {IMAGENET_SIZES}, got {input_shape!r}"
            )
    elif weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, 'imagenet' or a path to a weights file, got {weights!r}"
        )
    elif weights is not None and not os.path.exists(weights) and \
            not os.path.exists(os.fspath(weights) + ".index"):
        raise FileNotFoundError(f"weights file not found: {weights}")
    return alpha, input_shape, classes, dropout_rate, bn_momentum


@records_arguments
def MobileNetV2(
    alpha=1.0,
    input_shape=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    dropout_rate=0.0,
    output_stride=None,
    name=None,
    framework="keras",
    bn_momentum=0.999,
    expansion_splits=1,
    divisible_by=8,
    min_depth=None,
):
    """Builds MobileNetV2 and returns a functional ``keras.Model``.

    The model records this call (``keras_mnv2.record``): ``model.save("x.keras")`` and
    ``keras.saving.load_model`` rebuild it, and the QAT twin, export and split read it. Numpy
    scalars are accepted for every number; a bad argument raises one ValueError naming it.

    Args:
        alpha: width multiplier (> 0). Channel counts are ``make_divisible(c * alpha, 8)``; the
            last 1x1 conv stays 1280 wide for alpha <= 1 (paper section 6.1).
        input_shape: (height, width, 3), channels-last; sides of at least 32 px or None. Defaults
            to (224, 224, 3) with the top (or with ImageNet weights), else (None, None, 3).
        include_top: whether to end with global pooling and the classifier (the layer list of
            keras.applications.MobileNetV2); needs a static input_shape.
        weights: None (random), "imagenet" (the official keras.applications file for this alpha
            and resolution, from the Keras cache), the path of a .weights.h5 / .h5 / .keras file
            (see ``load_weights_file``; with ``expansion_splits`` the whole-block weights are
            sliced into the groups), an official .tflite file or a TF1 checkpoint prefix
            (``keras_mnv2.convert``).
        input_tensor: optional Keras tensor to build on instead of a new Input (its shape must
            agree with ``input_shape`` when both are given). The model then has no builder record
            (see ``keras_mnv2.record``).
        pooling: without the top, None (4-D feature map), "avg" or "max".
        classes: number of classes of the top.
        classifier_activation: activation of the top ("softmax", None for logits, ...); with
            pretrained weights only "softmax" or None, as keras.applications.
        dropout_rate: > 0 adds a ``Dropout`` before the classifier (training only; TF-slim trains
            with 0.2, as ``pipelines.jobs.classification`` does). The default 0 leaves it out.
        output_stride: None or 32 (classification), 16 or 8 (atrous convolution, for
            segmentation).
        name: model name; defaults to ``mobilenetv2_{alpha:.2f}_{rows}`` as keras.applications.
        framework: "keras" (Keras 3) or "tf_keras" (Keras 2, for TFMOT).
        bn_momentum: batch-norm moving-average momentum (0.999 as keras.applications; short
            training runs need less, or the inference statistics lag far behind).
        expansion_splits: 1 (the standard graph), an integer k > 1 to compute every inverted
            residual with an expansion layer over k channel groups of its expanded tensor, one
            group at a time (paper section 5.1, memory-efficient inference; layers
            ``block_{i}_expand_s{j}`` ... ``block_{i}_project_s{j}``, see
            ``keras_mnv2.blocks.split_branch``), or one count per block of ``block_plan()``
            (see ``splits_per_block``; at most ``MAX_EXPANSION_SPLITS``). k is capped at each
            block's expanded width. Block 0 has
            no expansion: it splits together with Conv1 (``Conv1_s{j}``, ...), whose output
            channels are its groups.
            ``keras_mnv2.split.split_expansion`` converts a trained model.
        divisible_by: channel rounding of the scaled widths. 8 (the default) is the
            keras.applications rule, ``make_divisible(int(c * alpha), 8)``. Any other value
            applies TF-slim's ``depth_multiplier`` rule, ``make_divisible(c * alpha, divisible_by,
            min_depth)``, with expanded widths rounded to multiples of 8 as slim's
            ``expand_input_by_factor`` does: DeepLab builds its backbone with
            ``divisible_by=1, min_depth=1`` whenever the depth multiplier is not 1 (widths 12
            and 72 at alpha 0.5, where the default gives 16 and 96).
        min_depth: smallest scaled width; None means ``divisible_by``.
    """
    keras = get_keras(framework)
    layers = keras.layers
    channels_last(keras)
    alpha, input_shape, classes, dropout_rate, bn_momentum = _validate(
        alpha, input_shape, include_top, weights, pooling, classes, output_stride, dropout_rate,
        classifier_activation, bn_momentum)
    width = channel_rounding(alpha, divisible_by, min_depth)
    expansion_divisor = None if (divisible_by, min_depth) == (8, None) else 8
    splits = splits_per_block(expansion_splits)

    if input_tensor is not None:
        if not hasattr(input_tensor, "shape") or len(input_tensor.shape) != 4:
            raise ValueError(
                f"input_tensor must be a 4-D Keras tensor (batch, height, width, channels), got "
                f"{input_tensor!r}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and any(
                a is not None and b is not None and a != b
                for a, b in zip(input_shape, tensor_shape)):
            raise ValueError(
                f"input_tensor has shape {tensor_shape}, which conflicts with input_shape="
                f"{input_shape}; pass one of them, or the same shape"
            )
        _validate(alpha, tensor_shape, include_top, weights, pooling, classes, output_stride,
                  dropout_rate, classifier_activation, bn_momentum, shape_given=False)
        input_shape = tensor_shape
    elif input_shape is None:
        input_shape = (224, 224, 3) if include_top or weights == "imagenet" else (None, None, 3)

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
        inputs = img_input
    else:
        img_input = input_tensor
        inputs = keras.utils.get_source_inputs(input_tensor)

    # Conv1 is handed to block 0, which has no expansion of its own: split, Conv1's output
    # channels are block 0's groups (the paper's Table 3 note on the first layer).
    stem = conv_bn_layers(keras, width(32, stem=True), 3, "Conv1", "bn_Conv1",
                          strides=2, relu_name="Conv1_relu", bn_momentum=bn_momentum)
    x = img_input
    for block_id, t, c, stride, dilation in block_plan(output_stride):
        x = inverted_residual(keras, x, t, width(c), stride, block_id,
                              dilation, bn_momentum=bn_momentum, splits=splits[block_id],
                              stem=stem if block_id == 0 else (),
                              expansion_divisor=expansion_divisor)
    last_filters = width(1280, stem=True) if alpha > 1.0 else 1280
    x = conv_bn(keras, x, last_filters, 1, "Conv_1", "Conv_1_bn", relu_name="out_relu",
                bn_momentum=bn_momentum)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="global_max_pooling2d")(x)

    rows = input_shape[0]
    if name is None:
        name = f"mobilenetv2_{alpha:0.2f}_{rows}"
    model = functional(keras, inputs, x, name=name)

    if weights is not None:
        path = imagenet_weights_path(alpha, rows, include_top) if weights == "imagenet" \
            else weights

        def unsplit():  # the same model with whole blocks, for files that hold that form
            return MobileNetV2.__wrapped__(
                alpha=alpha, input_shape=input_shape, include_top=include_top, weights=None,
                pooling=pooling, classes=classes, classifier_activation=classifier_activation,
                dropout_rate=dropout_rate, output_stride=output_stride, framework=framework,
                bn_momentum=bn_momentum, divisible_by=divisible_by, min_depth=min_depth)

        load_weights_file(model, path, unsplit=unsplit if max(splits) > 1 else None)
    return model


def channel_rounding(alpha, divisible_by=8, min_depth=None):
    """The width rule of ``MobileNetV2``: a function from a paper width c to the built width.

    The default ``(8, None)`` is keras.applications' rule (``make_divisible(int(c * alpha))``
    in the blocks, ``make_divisible(c * alpha)`` for Conv1 and the last conv); anything else is
    TF-slim's ``make_divisible(c * alpha, divisible_by, min_depth)`` everywhere.
    """
    if not isinstance(divisible_by, int) or isinstance(divisible_by, bool) or divisible_by < 1:
        raise ValueError(f"divisible_by must be an integer >= 1, got {divisible_by!r}")
    if min_depth is not None and (not isinstance(min_depth, int) or isinstance(min_depth, bool)
                                  or min_depth < 1):
        raise ValueError(f"min_depth must be None or an integer >= 1, got {min_depth!r}")
    if (divisible_by, min_depth) == (8, None):
        return lambda c, stem=False: make_divisible(c * alpha if stem else int(c * alpha))
    return lambda c, stem=False: make_divisible(c * alpha, divisible_by, min_depth)


def imagenet_weights_filename(alpha, rows, include_top=True):
    """File name of the official keras.applications weights for (alpha, rows)."""
    suffix = ".h5" if include_top else "_no_top.h5"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{suffix}"


def keras_cache_dir():
    """The Keras cache directory ($KERAS_HOME, or ~/.keras)."""
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))


def imagenet_weights_path(alpha, rows, include_top=True):
    """Local path of the official ImageNet weights, fetched with get_file where a network exists.

    Offline and not cached, raises FileNotFoundError saying which file to put where.
    """
    if rows not in IMAGENET_SIZES:
        # keras.applications does the same: the nearest weights are not exact for other sizes,
        # so without the top it falls back to 224.
        rows = 224
    filename = imagenet_weights_filename(alpha, rows, include_top)
    local = os.path.join(keras_cache_dir(), "models", filename)
    if os.path.exists(local):
        return local
    import keras

    try:
        return keras.utils.get_file(filename, WEIGHTS_BASE_URL + filename, cache_subdir="models")
    except Exception as err:
        raise FileNotFoundError(
            f"ImageNet weights for MobileNetV2 alpha={alpha} at {rows} px are not cached and "
            f"could not be downloaded ({type(err).__name__}). Put the file {filename} "
            f"(from {WEIGHTS_BASE_URL + filename}) at {local}, or pass weights=<path>."
        ) from err


def load_weights_file(model, path, unsplit=None):
    """Loads a .weights.h5, legacy .h5 or .keras file into ``model``.

    Legacy .h5 files (keras.applications, tf_keras) load by layer order, as keras.applications
    loads them; .weights.h5 files by layer name; .keras files by layer name through
    ``copy_weights``. A model with split-expansion blocks (paper section 5.1) cannot take a file
    of the whole-block form directly: ``unsplit()`` then builds the whole-block model, the file
    loads into it, and ``keras_mnv2.split.split_expansion`` slices its weights into ``model``.
    Raises FileNotFoundError or ValueError naming the file (missing, wrong extension, not an
    HDF5 / Keras zip file).
    """
    import zipfile

    import h5py

    from keras_mnv2.weights import copy_weights

    path = os.fspath(path)
    name = os.path.basename(path)
    from keras_mnv2 import convert

    if convert.is_official_path(path):  # an official .tflite file or TF1 checkpoint
        if not os.path.exists(path) and not os.path.exists(path + ".index"):
            raise FileNotFoundError(f"weights file not found: {path}")
        convert.load_into(model, path)
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".keras"):
        import keras

        if not zipfile.is_zipfile(path):
            raise ValueError(f"weights file {path} is not a .keras model file (not a zip "
                             "archive: corrupt, truncated or another format)")
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as err:  # keras says little more than "File not found" here
            raise ValueError(f"weights file {path} could not be loaded as a Keras model: "
                             f"{type(err).__name__}: {err}") from err
        if unsplit is not None and not _has_split_layers(layer.name for layer in source.layers):
            from keras_mnv2.split import split_expansion

            source = split_expansion(source, _split_counts(model))
        copy_weights(source, model)
        return
    if not (path.endswith(".weights.h5") or path.endswith(".h5")):
        raise ValueError("weights file must end in .weights.h5, .h5 or .keras (or be an official "
                         f".tflite file or TF checkpoint prefix), got {name}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"weights file {path} is not an HDF5 file (corrupt, truncated or "
                         "another format)")
    if unsplit is not None:
        with h5py.File(path, "r") as f:
            keys = []
            f.visit(keys.append)
        if not _has_split_layers(key.split("/")[-1] for key in keys) and not _has_split_layers(
                part for key in keys for part in key.split("/")):
            from keras_mnv2.split import split_expansion

            whole = unsplit()
            whole.load_weights(path)
            copy_weights(split_expansion(whole, _split_counts(model)), model)
            return
    model.load_weights(path)


def _has_split_layers(names):
    return any(re.fullmatch(r"(Conv1|block_\d+_expand)_s\d+", name) for name in names)


def _split_counts(model):
    """Split counts per block of a model in split form (1 for whole blocks)."""
    from keras_mnv2.split import split_blocks

    found = split_blocks(model)
    return tuple(found.get("expanded_conv_" if block_id == 0 else f"block_{block_id}_", 1)
                 for block_id, *_ in block_plan())


def feature_extractor(model, layer_names=("block_13_expand_relu", "out_relu"), name=None):
    """A model from ``model``'s input to the named layers' outputs, as a dict keyed by name.

    It shares layers and weights with ``model`` (no rebuild). The defaults are the SSDLite taps
    (stride 16 and 32); DeepLabV3 uses ``block_16_project_BN`` (the 320-channel output).
    """
    keras = get_keras(framework_of(model))
    outputs = {}
    for layer_name in layer_names:
        try:
            outputs[layer_name] = model.get_layer(layer_name).output
        except ValueError as err:
            raise ValueError(
                f"model {model.name!r} has no layer named {layer_name!r}"
            ) from err
    return keras.Model(model.inputs, outputs, name=name or f"{model.name}_features")

