"""Quantization-aware training with TFMOT's default 8-bit scheme (Jacob et al., CVPR 2018: fake
quantization in training, batch norm folded into the preceding convolution at conversion,
per-channel Conv2D weights; TFMOT simulates depthwise weights per tensor, the converter then
stores them per channel).

TFMOT only rewrites tf_keras (Keras 2) models, so a trained Keras 3 model goes through its
*twin*: the same builder run with ``framework="tf_keras"`` (same code, same layer names), with the
weights copied by layer name. Then::

    twin = tf_keras_twin(model)            # or a path to a .keras checkpoint
    qat_model = quantize(twin, calibration_data=images)  # prints the layers left float, if any
    qat_fit(qat_model, train_ds, epochs=2, loss=..., learning_rate=1e-4, run_dir="runs/x/qat")
    keras_mnv2.deploy.export.export_tflite(qat_model, "model_qat.tflite", mode="qat")

The twin is rebuilt from the record of the builder's arguments that every keras_mnv2 model
carries (``builder_config``; ``keras_mnv2.record``), which a ``.keras`` round trip keeps, so a
reloaded model needs no side file; pass ``builder=`` and its keyword arguments to
``tf_keras_twin`` for a model without one.
"""

import os

import numpy as np

from keras_mnv2.errors import InputError
from keras_mnv2.frameworks import framework_of, get_keras
from keras_mnv2.record import load_keras_model


# Layers the default 8-bit registry does not know but that TFLite runs in int8: annotated so their
# output gets a fake-quant (and the TFLite op reads and writes int8).
OUTPUT_QUANTIZED = ("Resizing", "BilinearResize", "Multiply", "Subtract", "Maximum", "Minimum", "Average",
                    "Rescaling")
_FOLDING_PRODUCERS = ("Conv2D", "DepthwiseConv2D")  # a BN after these is folded by TFMOT


# ----------------------------------------------------------------------------------------------
# The builder record


def builder_config(model):
    """Which keras_mnv2 builder made ``model`` and with which arguments: ``(builder, kwargs)``.

    Read from the record the builder left on the model (``keras_mnv2.record``), which a ``.keras``
    round trip keeps. Where the weights came from is recorded as None (the twin gets them by
    copy). Raises ValueError when ``model`` carries no record: not built by ``MobileNetV2``,
    ``SSDLite`` or ``DeepLabV3``, built on an ``input_tensor``, rewritten after the build
    (``keras_mnv2.split.fold_projection_bn``), or saved by a keras_mnv2 without records.
    """
    from keras_mnv2.record import builder_config as recorded

    found = recorded(model)
    if found is None:
        raise InputError(
            f"cannot tell which keras_mnv2 builder made model {model.name!r}: it carries no "
            "builder record (built by hand, on an input_tensor, rewritten after the build, or "
            "saved by an older keras_mnv2); pass builder= and its keyword arguments"
        )
    return found


def _get(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# The twin


def tf_keras_twin(model, builder=None, check=True, **kwargs):
    """The tf_keras build of a Keras 3 keras_mnv2 model, with its weights.

    Args:
        model: a Keras 3 model from ``MobileNetV2``, ``SSDLite`` or ``DeepLabV3``, or the path of
            a ``.keras`` file holding one.
        builder: the builder to call; None takes it and its arguments from the model's record
            (``builder_config``).
        check: run both models on one random image and raise if their outputs differ (atol and
            rtol 1e-4): proof that the rebuild and the weight copy are right.
        **kwargs: builder arguments; with ``builder=None`` they override the recorded ones.

    Every weighted layer must be copied both ways (no layer of either model left out). SSDLite's
    ``anchors`` attribute is carried over when the source has it.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_keras_model(model)
    if framework_of(model) != "keras":
        raise TypeError(f"model {model.name!r} is already a tf_keras model")
    if builder is None:
        builder, recorded = builder_config(model)
        kwargs = {**recorded, **kwargs}
    kwargs.pop("framework", None)
    twin = builder(**kwargs, framework="tf_keras")
    from keras_mnv2.weights import copy_weights

    copied = copy_weights(model, twin)
    weighted = sum(1 for layer in twin.layers if layer.weights)
    if copied != weighted:
        raise InputError(f"twin of {model.name!r}: {weighted} weighted layers but {copied} "
                         "received weights from the source")
    if getattr(model, "anchors", None) is not None:
        twin.anchors = np.asarray(model.anchors)
    if check:
        check_twin(model, twin)
    return twin


def check_twin(model, twin, atol=1e-4, rtol=1e-4, seed=0):
    """Raises ValueError when ``model`` and ``twin`` disagree on a random image; returns the
    largest absolute difference over all outputs."""
    shape = [1] + [d if d is not None else 96 for d in model.input_shape[1:]]
    x = np.random.RandomState(seed).uniform(-1, 1, shape).astype("float32")
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():  # Keras 3 warns when a [input] model is given a bare tensor
        warnings.simplefilter("ignore", UserWarning)
        expected = tf.nest.flatten(model(x, training=False))
    got = tf.nest.flatten(twin(x, training=False))
    if len(expected) != len(got):
        raise InputError(f"twin of {model.name!r} has {len(got)} outputs, the model "
                         f"{len(expected)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(expected, got)):
        a = a.detach() if hasattr(a, "detach") else a  # a torch-backend output
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise InputError(f"twin of {model.name!r}: output {i} has shape {b.shape}, the "
                             f"model {a.shape}")
        diff = np.abs(a - b)
        worst = max(worst, float(diff.max()))
        if np.any(diff > atol + rtol * np.abs(a)):
            raise InputError(
                f"twin of {model.name!r}: output {i} differs by up to {diff.max():.3g}; the "
                "builder arguments are wrong: pass builder= and its arguments"
            )
    return worst


# ----------------------------------------------------------------------------------------------
# Quantization


def _registry():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def _inbound_class(layer):
    nodes = layer.inbound_nodes
    if len(nodes) != 1:
        return None
    inbound = nodes[0].inbound_layers
    if isinstance(inbound, (list, tuple)):
        return type(inbound[0]).__name__ if len(inbound) == 1 else None
    return type(inbound).__name__


def quantization_plan(model, keep_float=()):
    """What the default 8-bit scheme (plus keras_mnv2's annotations) does to each layer of a
    tf_keras model: ``{layer name: how}``, in layer order, where ``how`` is one of

    - ``"int8 weights + output"``: weights fake-quantized (per channel for convolutions), and the
      output (or, with a ReLU after it, the ReLU's);
    - ``"int8 output"``: the output is fake-quantized (ReLU, Add, Concatenate, pooling, ...);
    - ``"int8 passthrough"``: no arithmetic (Reshape, ZeroPadding2D, Dropout, ...); TFLite runs
      it on the int8 tensor with its input's scale;
    - ``"folded into <conv>"``: a batch norm right after a convolution;
    - ``"int8 output (annotated)"``: not in the default registry, annotated by keras_mnv2
      (``OUTPUT_QUANTIZED``, e.g. ``Resizing``, or a batch norm after a non-convolution);
    - ``"float (...)"``: left in float, with the reason (in ``keep_float``, or a layer class the
      scheme cannot quantize). These are what ``quantize`` reports.
    """
    framework_of(model)
    keep_float = set(keep_float)
    unknown = keep_float - {layer.name for layer in model.layers}
    if unknown:
        raise InputError(f"keep_float names layers not in {model.name!r}: {sorted(unknown)}")
    registry = _registry()
    plan = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if layer.name in keep_float:
            plan[layer.name] = "float (keep_float)"
        elif kind == "BatchNormalization":
            producer = _inbound_class(layer)
            plan[layer.name] = (f"folded into {producer}" if producer in _FOLDING_PRODUCERS
                                else "int8 output (annotated)")
        elif registry.supports(layer):
            config = registry.get_quantize_config(layer)
            if config.get_weights_and_quantizers(layer):
                plan[layer.name] = "int8 weights + output"
            elif (getattr(config, "activation_attrs", None) or getattr(config, "quantize_output",
                                                                         False)
                  or kind in ("Activation", "Softmax")):
                plan[layer.name] = "int8 output"
            else:
                plan[layer.name] = "int8 passthrough"
        elif kind in OUTPUT_QUANTIZED:
            plan[layer.name] = "int8 output (annotated)"
        else:
            plan[layer.name] = f"float ({kind} has no 8-bit QuantizeConfig)"
    return plan


def float_layers(plan):
    """The layers a ``quantization_plan`` leaves in float."""
    return [name for name, how in plan.items() if how.startswith("float")]


SCHEMES = ("tfmot", "keras")


def quantize(model, keep_float=(), calibration_data=None, log=print, scheme="tfmot"):
    """A TFMOT quantization-aware copy of ``model`` (default 8-bit scheme), or with
    ``scheme="keras"`` a Keras 3 one (``keras_mnv2.deploy.keras_qat.quantize_keras``: no twin,
    trained by plain ``fit()``; ``keep_float`` does not apply).

    Args:
        model: a tf_keras twin, or a Keras 3 keras_mnv2 model (its twin is built first).
        keep_float: names of layers to leave in float on purpose.
        calibration_data: images (array, tf.data.Dataset, generator function, as for
            ``keras_mnv2.deploy.export``) to start the quantization ranges from, as post-training
            calibration would (``calibrate_ranges``). Without it TFMOT starts every activation
            range at [-6, 6] and the input range empty, and its moving averages (decay 0.999)
            need on the order of a thousand steps to settle: pass it for short fine-tunes.
        log: called with one line naming the layers left float (or saying there are none);
            None to stay quiet. ``quantization_plan`` returns the full picture.

    Layers the default registry does not cover are annotated (``quantization_plan``); anything
    it cannot quantize stays float and is named, never dropped silently. The result is a new
    tf_keras model (layers named ``quant_<name>``) with the source's weights; SSDLite's
    ``anchors`` carry over. A model with split-expansion blocks (paper section 5.1) first has
    the batch norm after each block's sum of partial projections folded into the projections
    (``keras_mnv2.split.fold_projection_bn``), which TFMOT would otherwise leave in float.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )

    from keras_mnv2.split import fold_projection_bn, foldable_blocks

    if scheme not in SCHEMES:
        raise InputError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "keras":
        from keras_mnv2.deploy.keras_qat import quantize_keras

        if keep_float:
            raise InputError("keep_float applies to scheme 'tfmot' only")
        if foldable_blocks(model):
            model = fold_projection_bn(model)
        return quantize_keras(model, calibration_data=calibration_data, log=log)
    if framework_of(model) == "keras":
        model = tf_keras_twin(model)
    if foldable_blocks(model):  # split blocks: their projection BN would stay float otherwise
        model = fold_projection_bn(model)
    plan = quantization_plan(model, keep_float)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotated(layer):
        how = plan.get(layer.name)
        if how is None:  # the input layer
            return layer
        if how.startswith("float"):
            return annotate(layer, configs.NoOpQuantizeConfig())
        if how == "int8 output (annotated)":
            return annotate(layer, configs.Default8BitOutputQuantizeConfig())
        return annotate(layer)

    annotated_model = tf_keras.models.clone_model(model, clone_function=annotated)
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope

        unsafe = SafeModeScope(False)
    except ImportError:  # pragma: no cover - older tf_keras: no safe mode to leave
        import contextlib

        unsafe = contextlib.nullcontext()
    # quantize_apply clones the in-memory model through its config; a Lambda layer (left float)
    # only round-trips with safe mode off. No file is read here.
    with tfmot.quantization.keras.quantize_scope(), unsafe:
        qat_model = tfmot.quantization.keras.quantize_apply(annotated_model)
    if getattr(model, "anchors", None) is not None:
        qat_model.anchors = np.asarray(model.anchors)
    if calibration_data is not None:
        calibrate_ranges(qat_model, model, calibration_data)
    if log is not None:
        left = float_layers(plan)
        log(f"quantize {model.name}: {len(plan) - len(left)} layers quantized, "
            + (f"{len(left)} left float: {', '.join(left)}" if left else "none left float"))
    return qat_model


def _range_variables(qat_model):
    """{(wrapper, kind): (min_var, max_var)}, kind "input", "output" (the layer's output, also
    after its activation) or "pre_activation" (a Dense before its softmax)."""
    found = {}
    for layer in qat_model.layers:
        for variable in layer.weights:
            name = variable.name.split(":")[0]
            for suffix, kind in (("output_min", "output"), ("post_activation_min", "output"),
                                 ("pre_activation_min", "pre_activation"),
                                 (f"{layer.name}_min", "input")):
                if name.endswith("/" + suffix):
                    maximum = next(v for v in layer.weights
                                   if v.name.split(":")[0] == name[:-len("min")] + "max")
                    found[(layer, kind)] = (variable, maximum)
    return found


def uncalibrated_inputs(qat_model):
    """Names of the QAT model's input quantizers whose range is still empty (never trained nor
    calibrated): such a model quantizes every input to zero."""
    return [layer.name for (layer, kind), (low, high) in _range_variables(qat_model).items()
            if kind == "input" and float(low.numpy()) == float(high.numpy()) == 0.0]


def calibrate_ranges(qat_model, float_model, data, limit=100, batch_size=16):
    """Starts a QAT model's quantization ranges from data, as post-training calibration does.

    Weight ranges and the input range come from one training-mode pass (with the batch-norm
    moving statistics frozen); each activation range is set to the [min, max] (widened to hold
    0) of the matching layer's output in ``float_model`` (the twin or the Keras 3 model) over
    up to ``limit`` images of ``data``. Returns the number of activation ranges set.
    """
    from keras_mnv2.deploy.calibration import calibration_images

    images = np.concatenate(calibration_images(data, float_model.input_shape[1:], limit))
    norms = [layer.layer for layer in qat_model.layers
             if type(getattr(layer, "layer", None)).__name__ == "BatchNormalization"]
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 1.0
        qat_model(images[:batch_size], training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum

    keras = get_keras(framework_of(float_model))
    ranges = _range_variables(qat_model)
    probes, targets = [], []
    for (layer, kind), variables in ranges.items():
        inner = getattr(layer, "layer", None)
        if kind == "input" or inner is None:
            continue
        source = _get(float_model, inner.name)
        if source is None:
            continue
        if kind == "output":
            probes.append(source.output)
            targets.append((variables, None))
        elif type(source).__name__ == "Dense":
            probes.append(source.input)
            targets.append((variables, source))
    probe = keras.Model(float_model.inputs, probes)
    low = [np.inf] * len(probes)
    high = [-np.inf] * len(probes)
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, (value, (_, dense)) in enumerate(zip(outputs, targets)):
            value = np.asarray(value)
            if dense is not None:  # the pre-activation: x @ kernel + bias
                kernel, *bias = dense.get_weights()
                value = value @ kernel + (bias[0] if bias else 0.0)
            low[i], high[i] = min(low[i], float(value.min())), max(high[i], float(value.max()))
    for ((min_var, max_var), _), lo, hi in zip(targets, low, high):
        min_var.assign(min(lo, 0.0))
        max_var.assign(max(hi, 0.0))
    for (layer, kind), (min_var, max_var) in ranges.items():
        if kind == "input":
            min_var.assign(min(float(images.min()), 0.0))
            max_var.assign(max(float(images.max()), 0.0))
    return len(targets)


def is_quantized(model):
    """Whether ``model`` is a TFMOT quantization-aware tf_keras model."""
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_layer,
        quantize_wrapper,
    )

    return any(isinstance(layer, (quantize_wrapper.QuantizeWrapper, quantize_layer.QuantizeLayer))
               for layer in getattr(model, "layers", ()))


def qat_scope():
    """The scope to load a saved quantization-aware model in (``tf_keras.models.load_model``)."""
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_scope()


def float_from_qat(qat_model, float_model):
    """Copies the (fine-tuned) float weights inside a QAT model's wrappers into a model of the
    same architecture (Keras 3 or tf_keras), layer by layer in weight order; returns the number
    of layers copied. Raises ValueError naming a layer it cannot match."""
    groups = {}  # inner layer name -> its variables, in creation order (quantizer variables
    for variable in qat_model.variables:  # live under "quant_<name>/" and are left out)
        groups.setdefault(variable.name.split("/")[0], []).append(variable)
    copied = 0
    for layer in float_model.layers:
        if not layer.weights:
            continue
        source = groups.get(layer.name, [])
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in source] != shapes:
            raise InputError(f"layer {layer.name!r}: {qat_model.name!r} holds weights of shapes "
                             f"{[tuple(v.shape) for v in source]}, expected {shapes}")
        layer.set_weights([v.numpy() for v in source])
        copied += 1
    return copied


# ----------------------------------------------------------------------------------------------
# Fine-tuning


def _tf_keras_loss(loss):
    """tf_keras takes any callable; Keras 3 Loss objects are wrapped as plain functions."""
    if isinstance(loss, dict):
        return {key: _tf_keras_loss(value) for key, value in loss.items()}
    if isinstance(loss, str) or loss is None:
        return loss

    def fn(y_true, y_pred):
        return loss(y_true, y_pred)

    fn.__name__ = getattr(loss, "name", None) or getattr(loss, "__name__", "loss")
    return fn


def compile_qat(qat_model, loss, learning_rate=1e-4, optimizer="adam", metrics=None):
    """Compiles a quantization-aware model (``quantize``) for fine-tuning.

    Args:
        loss: the training loss (Keras 3 loss objects, a dict per output, or tf_keras names).
        optimizer: "adam", "sgd" (momentum 0.9), "rmsprop" or a tf_keras optimizer.
    """
    import tf_keras

    if not is_quantized(qat_model):
        raise InputError(f"model {qat_model.name!r} is not quantization-aware: call quantize() "
                         "first")
    if isinstance(optimizer, str):
        choices = {
            "adam": lambda: tf_keras.optimizers.Adam(learning_rate),
            "sgd": lambda: tf_keras.optimizers.SGD(learning_rate, momentum=0.9),
            "rmsprop": lambda: tf_keras.optimizers.RMSprop(learning_rate, momentum=0.9),
        }
        if optimizer not in choices:
            raise InputError(f"optimizer must be one of {sorted(choices)} or a tf_keras "
                             f"optimizer, got {optimizer!r}")
        optimizer = choices[optimizer]()
    qat_model.compile(optimizer=optimizer, loss=_tf_keras_loss(loss), metrics=metrics)
    return qat_model


def qat_fit(qat_model, train_data, epochs, loss=None, learning_rate=1e-4, optimizer="adam",
            run_dir=None, steps_per_epoch=None, validation_data=None, metrics=None,
            verbose="auto", callbacks=()):
    """Fine-tunes a quantization-aware model (``quantize``) on the training tf.data pipeline.

    Use the same dataset as the float run, with a small learning rate (``pipelines.jobs.deploy``
    uses 1/50 of the float run's peak) and a few epochs: QAT starts from the trained weights and
    only adapts them to the rounding.

    Args:
        loss: as ``compile_qat``; None keeps the model's compiled loss (the model must then be
            compiled).
        optimizer: as ``compile_qat``.
        run_dir: where the QAT run writes, through the training driver every job uses
            (``pipelines.jobs.driver.fit``), ``history.csv``, ``last.weights.h5`` (the weights
            after each epoch) and ``backup/`` (a killed run restarted with the same call resumes
            from the last finished epoch), each through a temporary file and a rename (a kill
            leaves the old or the new content); None: plain ``fit()``, nothing written.
    Returns the tf_keras History (of the epochs trained by this call).
    """
    import tf_keras

    if loss is not None:
        compile_qat(qat_model, loss, learning_rate, optimizer, metrics)
    elif not is_quantized(qat_model):
        raise InputError(f"model {qat_model.name!r} is not quantization-aware: call quantize() "
                         "first")
    elif qat_model.optimizer is None:
        raise InputError("pass loss= (the model is not compiled)")
    if run_dir is None:
        return qat_model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch,
                             validation_data=validation_data, verbose=verbose,
                             callbacks=[tf_keras.callbacks.TerminateOnNaN(), *callbacks])
    from pipelines.jobs import driver

    driver.fit(qat_model, train_data, epochs, run_dir, validation_data=validation_data,
               steps_per_epoch=steps_per_epoch, verbose=verbose, extra_callbacks=callbacks,
               model_file="last.weights.h5")
    return qat_model.history


__all__ = [
    "OUTPUT_QUANTIZED",
    "SCHEMES",
    "builder_config",
    "calibrate_ranges",
    "check_twin",
    "compile_qat",
    "float_from_qat",
    "float_layers",
    "is_quantized",
    "load_keras_model",
    "qat_fit",
    "qat_scope",
    "quantization_plan",
    "quantize",
    "tf_keras_twin",
    "uncalibrated_inputs",
]
