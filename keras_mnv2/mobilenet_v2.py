"""MobileNetV2 (Sandler et al., CVPR 2018): the classifier and backbone builder.

The body is driven by the paper's Table 2 ``[t, c, n, s]`` table and one shared
``inverted_residual`` block; layer names match keras.applications.MobileNetV2 so its official
ImageNet weight files load unchanged.
"""

import os

import numpy as np

from keras_mnv2.blocks import conv_bn, conv_bn_layers, inverted_residual
from keras_mnv2.checks import channels_last, image_shape, integer, real
from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.frameworks import framework_of, get_keras
from keras_mnv2.record import functional, records_arguments
from keras_mnv2.weight_files import load_weights_file  # noqa: F401  (public here too)
from keras_mnv2.spec import (  # noqa: F401  (public here too)
    BLOCK_SPECS, MAX_EXPANSION_SPLITS, OUTPUT_STRIDES, block_plan, channel_rounding,
    splits_per_block)

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
POOLINGS = (None, "avg", "max")
MIN_INPUT_SIZE = 32


def _validate(alpha, input_shape, include_top, weights, pooling, classes, output_stride,
              dropout_rate, classifier_activation=None, bn_momentum=0.999, shape_given=True):
    """Checks the arguments; returns (alpha, input_shape, classes, dropout_rate, bn_momentum) as
    Python numbers (numpy scalars accepted). One ValueError naming the argument on a problem."""
    alpha = real(alpha, "alpha", minimum=0, low_open=True)
    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    classes = integer(classes, "classes", minimum=1)
    if output_stride not in OUTPUT_STRIDES:
        raise InputError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    dropout_rate = real(dropout_rate, "dropout_rate", 0, 1, high_open=True)
    bn_momentum = real(bn_momentum, "bn_momentum", 0, 1)
    if not isinstance(include_top, (bool, np.bool_)):
        raise InputError(f"include_top must be True or False, got {include_top!r}")
    if input_shape is not None:
        input_shape = image_shape(input_shape, MIN_INPUT_SIZE)
        if include_top and shape_given and None in input_shape[:2]:
            # as keras.applications: the top is built for one static size
            raise InputError(
                "include_top=True needs a static input_shape (height and width given), got "
                f"{input_shape!r}; use include_top=False for any input size"
            )
    if weights is not None and include_top and classifier_activation not in ("softmax", None):
        raise InputError(
            "with pretrained weights and include_top=True, classifier_activation must be "
            f"'softmax' or None (as keras.applications), got {classifier_activation!r}"
        )
    if weights == "imagenet":
        if input_shape is not None and input_shape[-1] != 3:
            raise InputError(
                f"weights='imagenet' needs 3-channel input, got input_shape={input_shape!r}"
            )
        if alpha not in IMAGENET_ALPHAS:
            raise InputError(
                f"weights='imagenet' exists only for alpha in {IMAGENET_ALPHAS}, got {alpha!r}"
            )
        if include_top and classes != 1000:
            raise InputError(
                f"weights='imagenet' with include_top=True needs classes=1000, got {classes!r}"
            )
        if include_top and input_shape is not None and (
            input_shape[0] != input_shape[1] or input_shape[0] not in IMAGENET_SIZES
        ):
            raise InputError(
                "weights='imagenet' with include_top=True needs a square input_shape with "
                f"side in {IMAGENET_SIZES}, got {input_shape!r}"
            )
    elif weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise InputError(
            f"weights must be None, 'imagenet' or a path to a weights file, got {weights!r}"
        )
    elif weights is not None and not os.path.exists(weights) and \
            not os.path.exists(os.fspath(weights) + ".index"):
        raise MissingFileError(f"weights file not found: {weights}")
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
        dropout_rate: a rate above 0 adds a ``Dropout`` before the classifier (training only;
            TF-slim trains with 0.2, as ``pipelines.jobs.classification`` does). The default 0
            leaves it out.
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
            raise InputError(
                f"input_tensor must be a 4-D Keras tensor (batch, height, width, channels), got "
                f"{input_tensor!r}"
            )
        tensor_shape = tuple(input_tensor.shape[1:])
        if input_shape is not None and any(
                a is not None and b is not None and a != b
                for a, b in zip(input_shape, tensor_shape)):
            raise InputError(
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
        # float32 logits under a mixed-precision policy (as the loss and the softmax want)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions",
                         dtype="float32")(x)
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
        raise MissingFileError(
            f"ImageNet weights for MobileNetV2 alpha={alpha} at {rows} px are not cached and "
            f"could not be downloaded ({type(err).__name__}). Put the file {filename} "
            f"(from {WEIGHTS_BASE_URL + filename}) at {local}, or pass weights=<path>."
        ) from err


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
            raise InputError(
                f"model {model.name!r} has no layer named {layer_name!r}"
            ) from err
    return keras.Model(model.inputs, outputs, name=name or f"{model.name}_features")

