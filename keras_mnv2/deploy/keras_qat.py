"""Quantization-aware training in Keras 3 itself, without the tf_keras twin and TFMOT.

``quantize_keras(model)`` rewrites a trained Keras 3 functional model (``MobileNetV2``,
``SSDLite``, ``DeepLabV3``, or any graph of the same layer kinds) into a Keras 3 model that
simulates TFLite's int8 arithmetic in training, as TFMOT's default 8-bit scheme does (Jacob et
al., CVPR 2018):

- every Conv2D / DepthwiseConv2D followed by a BatchNormalization becomes one ``QuantConv2D`` /
  ``QuantDepthwiseConv2D`` with the BN folded in (kernel times gamma / sqrt(var + eps), bias
  beta - mean * that), the form the converter gives TFLite. The BN statistics are frozen at
  their trained values (the "freeze BN" stage of Jacob et al. section 3.2), so the weights that
  are fake-quantized in training are exactly the weights the .tflite file stores;
- weights: symmetric int8 with the narrow range [-127, 127], per output channel for the
  convolutions (depthwise too: the converter stores them per channel), per tensor for Dense, as
  TFMOT's ``LastValueQuantizer`` (range = the largest |w| of the last training step);
- activations: per-tensor asymmetric uint8-range fake quantization (``ActivationQuantizer``)
  with a moving average of the batch [min, max] (decay 0.999, always holding 0), TFMOT's
  ``MovingAverageQuantizer``. It sits on the model input and after every op TFLite runs in
  int8 with a new scale: after the ReLU6 of a conv + BN + ReLU6 (never between them: the
  converter fuses them), after linear projections, residual adds, concatenations, pooling and
  resizing. Reshape, zero padding and dropout pass the quantized tensor on; a softmax keeps
  TFLite's fixed int8 output scale (its input is quantized). TFMOT starts every range at
  [-6, 6]; here ReLU6 outputs start at [0, 6] (where the moving average of a ReLU6 goes) and the
  others at [-6, 6], and ``calibrate`` starts them all from data instead.

The fake quantization is ``keras.quantizers.fake_quant_with_min_max_vars``: on the TensorFlow
backend it is the ``FakeQuantWithMinMaxVars[PerChannel]`` op, which the TFLite converter turns
into int8 kernels (``keras_mnv2.deploy.export.export_tflite(qat_model, path, mode="qat")``);
on JAX and PyTorch it is a ``keras.ops`` composition with a straight-through gradient.
The layers are registered, so ``model.save("x.keras")`` / ``keras.saving.load_model`` round
trip the QAT model; plain ``compile()`` + ``fit()`` trains it.
"""

import numpy as np

import keras
from keras import ops

from keras_mnv2.errors import InputError

PACKAGE = "keras_mnv2"
EMA_DECAY = 0.999
_FOLDED = ("Conv2D", "DepthwiseConv2D")
# Layers whose output TFLite requantizes in int8 (a new scale): an ActivationQuantizer follows.
QUANTIZE_OUTPUT = ("ReLU", "Add", "Concatenate", "GlobalAveragePooling2D", "AveragePooling2D",
                   "UpSampling2D", "Resizing", "BilinearResize", "Multiply", "Subtract",
                   "Average", "Maximum", "Minimum", "Rescaling")
# Layers that pass the quantized tensor on with its scale (TFLite: same int8 scale in and out).
PASSTHROUGH = ("ZeroPadding2D", "Reshape", "Dropout", "Flatten", "MaxPooling2D", "Cropping2D",
               "SpatialDropout2D", "Identity")
_SOFTMAX = ("Softmax",)


# ----------------------------------------------------------------------------------------------
# Layers


def _fake_quant(x, low, high, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, low, high, num_bits=8, narrow_range=narrow_range, axis=axis)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor asymmetric 8-bit fake quantization of an activation.

    In training the range follows a moving average of the batch [min, max] (each widened to
    hold 0, as TFLite requires), ``range <- decay * range + (1 - decay) * batch``, and the
    updated range quantizes the batch (TFMOT's ``MovingAverageQuantizer``); in inference the
    stored range does. ``range_min`` / ``range_max`` are non-trainable variables saved with the
    model.
    """

    def __init__(self, ema_decay=EMA_DECAY, init_min=-6.0, init_max=6.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= ema_decay < 1.0:
            raise InputError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if not init_min <= 0.0 <= init_max:
            raise InputError(f"the initial range must hold 0, got [{init_min}, {init_max}]")
        self.ema_decay = float(ema_decay)
        self.init_min = float(init_min)
        self.init_max = float(init_max)
        self.enabled = True  # False: identity (calibration passes); not saved

    def build(self, input_shape):
        self.range_min = self.add_weight(
            name="range_min", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.init_min))
        self.range_max = self.add_weight(
            name="range_max", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.init_max))

    def call(self, inputs, training=False):
        if not self.enabled:
            return inputs
        low, high = self.range_min, self.range_max
        if training:
            x = ops.cast(inputs, "float32")
            decay = self.ema_decay
            low = decay * ops.convert_to_tensor(low) + (1.0 - decay) * ops.minimum(ops.min(x), 0.0)
            high = decay * ops.convert_to_tensor(high) + (1.0 - decay) * ops.maximum(ops.max(x),
                                                                                      0.0)
            self.range_min.assign(low)
            self.range_max.assign(high)
        return _fake_quant(inputs, low, high)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay, "init_min": self.init_min,
                "init_max": self.init_max}


class _WeightQuantizing:
    """Symmetric narrow-range int8 fake quantization of ``self.kernel`` (TFMOT's
    ``LastValueQuantizer``): the range is [-m, m], m the largest |w| (per output channel, or
    of the whole kernel), taken in every training step and kept in ``kernel_max`` for
    inference and conversion."""

    per_channel = True

    def _kernel_channels(self):
        return int(self.kernel.shape[-1]) * (int(self.kernel.shape[-2])
                                             if self._depthwise else 1)

    _depthwise = False

    def build(self, input_shape):
        _check_channels_last(self)
        super().build(input_shape)
        shape = (self._kernel_channels(),) if self.per_channel else ()
        self.kernel_max = self.add_weight(name="kernel_max", shape=shape, trainable=False,
                                          initializer="zeros")
        self.reset_kernel_range()

    def reset_kernel_range(self):
        """Sets the stored range from the current kernel (after loading weights into it)."""
        self.kernel_max.assign(ops.convert_to_numpy(self._kernel_abs_max()))

    def _kernel_as_channels(self, kernel):
        if self._depthwise:  # (kh, kw, C, multiplier): channels C * multiplier, TFLite's order
            kh, kw, c, m = kernel.shape
            return ops.reshape(kernel, (kh, kw, 1, c * m))
        return kernel

    def _kernel_abs_max(self):
        kernel = ops.abs(self._kernel_as_channels(ops.convert_to_tensor(self.kernel)))
        if not self.per_channel:
            return ops.max(kernel)
        axes = tuple(range(len(kernel.shape) - 1))
        return ops.max(kernel, axis=axes)

    # Conv2D/Dense save only kernel and bias (and their own quantization variables): all of
    # ours, kernel_max included, go to the .keras file in creation order.
    def save_own_variables(self, store):
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable

    def load_own_variables(self, store):
        if len(store.keys()) != len(self.variables):
            raise InputError(f"layer {self.name!r} expects {len(self.variables)} variables, the "
                             f"file holds {len(store.keys())}")
        for i, variable in enumerate(self.variables):
            variable.assign(store[str(i)])

    def quantized_kernel(self, training=False):
        if not getattr(self, "enabled", True):  # a float pass (``float_pass``)
            return self.kernel
        high = self._kernel_abs_max() if training else ops.convert_to_tensor(self.kernel_max)
        if training:
            self.kernel_max.assign(high)
        kernel = self._kernel_as_channels(ops.convert_to_tensor(self.kernel))
        if self.per_channel:
            quantized = _fake_quant(kernel, -high, high, narrow_range=True,
                                    axis=len(kernel.shape) - 1)
        else:
            quantized = _fake_quant(kernel, -high, high, narrow_range=True)
        return ops.reshape(quantized, self.kernel.shape)

    def _bias_and_activation(self, outputs):
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)


def _check_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise InputError(f"{layer.name}: quantization supports channels_last only")


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv2D(_WeightQuantizing, keras.layers.Conv2D):
    """Conv2D with per-output-channel int8 fake-quantized weights (BN folded in by
    ``quantize_keras``)."""

    def call(self, inputs, training=False):
        return self._bias_and_activation(
            self.convolution_op(inputs, self.quantized_kernel(training)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDepthwiseConv2D(_WeightQuantizing, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with per-channel int8 fake-quantized weights (TFMOT simulates them per
    tensor; the converter stores depthwise weights per channel, as here)."""

    _depthwise = True

    def call(self, inputs, training=False):
        return self._bias_and_activation(ops.depthwise_conv(
            inputs, self.quantized_kernel(training), strides=self.strides,
            padding=self.padding, dilation_rate=self.dilation_rate,
            data_format=self.data_format))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDense(_WeightQuantizing, keras.layers.Dense):
    """Dense with per-tensor int8 fake-quantized weights (TFMOT's Dense scheme)."""

    per_channel = False

    def call(self, inputs, training=False):
        return self._bias_and_activation(ops.matmul(inputs, self.quantized_kernel(training)))


QUANT_LAYERS = (ActivationQuantizer, QuantConv2D, QuantDepthwiseConv2D, QuantDense)


# ----------------------------------------------------------------------------------------------
# The rewrite


def _bn_fold(bn):
    """(scale, shift) of an inference-mode BatchNormalization: y = x * scale + shift."""
    values = {w.path.split("/")[-1]: np.asarray(ops.convert_to_numpy(w)) for w in bn.weights}
    variance = values["moving_variance"]
    scale = values.get("gamma", np.ones_like(variance)) / np.sqrt(variance + bn.epsilon)
    shift = values.get("beta", np.zeros_like(variance)) - scale * values["moving_mean"]
    return scale.astype("float32"), shift.astype("float32")


def _activation_name(layer):
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def _is_relu(layer):
    kind = type(layer).__name__
    if kind == "ReLU":
        return True
    return kind == "Activation" and _activation_name(layer) in ("relu", "relu6")


def _relu6(layer):
    if type(layer).__name__ == "ReLU":
        return layer.max_value is not None and float(layer.max_value) == 6.0
    return _activation_name(layer) == "relu6"


def quantization_plan(model):
    """What ``quantize_keras`` does to each layer of ``model``: {layer name: how}, in graph
    order, ``how`` one of "folded into <conv>", "int8 weights (per channel|per tensor)",
    "int8 output", "int8 passthrough", "softmax (TFLite's fixed int8 scale)" or "float (...)".
    A layer marked float stays float in the QAT model and the .tflite file."""
    from keras_mnv2.profiler import _node_inputs, _node_layer, _nodes_in_order

    nodes = _nodes_in_order(model)
    consumers = _consumers(nodes)
    plan = {}
    for node in nodes:
        layer = _node_layer(node)
        kind = type(layer).__name__
        if kind == "InputLayer":
            plan[layer.name] = "int8 output"
        elif kind == "BatchNormalization":
            inputs = _node_inputs(node)
            producer = _producer(inputs[0]) if len(inputs) == 1 else None
            if producer is not None and type(producer).__name__ in _FOLDED and \
                    len(consumers.get(id(inputs[0]), ())) == 1 and \
                    _activation_name(producer) in (None, "linear"):
                plan[layer.name] = f"folded into {producer.name}"
            else:
                plan[layer.name] = "float (a BatchNormalization not after a convolution)"
        elif kind in _FOLDED:
            plan[layer.name] = "int8 weights (per channel)"
        elif kind == "Dense":
            plan[layer.name] = "int8 weights (per tensor)"
        elif kind in QUANTIZE_OUTPUT or (kind == "Activation" and _is_relu(layer)):
            plan[layer.name] = "int8 output"
        elif kind in PASSTHROUGH:
            plan[layer.name] = "int8 passthrough"
        elif kind in _SOFTMAX or (kind == "Activation" and _activation_name(layer) == "softmax"):
            plan[layer.name] = "softmax (TFLite's fixed int8 scale)"
        else:
            plan[layer.name] = f"float ({kind} is not quantized)"
    return plan


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def _consumers(nodes):
    from keras_mnv2.profiler import _node_inputs, _node_layer

    found = {}
    for node in nodes:
        for tensor in _node_inputs(node):
            found.setdefault(id(tensor), []).append(_node_layer(node))
    return found


def _output_ids(model):
    from keras_mnv2.profiler import _flatten

    return {id(t) for t in _flatten(model.outputs)}


def quantize_keras(model, calibration_data=None, num_calibration_images=100, log=print,
                   name=None):
    """A Keras 3 quantization-aware copy of ``model`` (see the module docstring).

    Args:
        model: a Keras 3 functional model (a keras_mnv2 builder's, trained or loaded from a
            .keras file), or the path of a .keras file.
        calibration_data: images (array, tf.data.Dataset or generator function, as
            ``keras_mnv2.deploy.calibration.calibration_images`` takes) to start the activation
            ranges from (``calibrate``); without it they start at TFMOT's [-6, 6] ([0, 6] after
            a ReLU6) and need about a thousand training steps (decay 0.999) to settle.
        log: called with one line: how many layers were quantized and which stay float.

    The result has the source's layer names for the weighted layers (the folded BNs are gone),
    ``<name>_quant`` for the activation quantizers (``input_quant`` on the input); SSDLite's
    ``anchors`` carry over. Raises ValueError for a model that is not functional, not Keras 3,
    or already quantized.
    """
    from keras_mnv2.record import load_keras_model
    from keras_mnv2.frameworks import framework_of
    from keras_mnv2.profiler import _node_inputs, _node_layer, _node_outputs, _nodes_in_order
    from keras_mnv2.split import _replay

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_keras_model(model)
    if framework_of(model) != "keras":
        raise InputError(f"quantize_keras needs a Keras 3 model; {model.name!r} is tf_keras "
                         "(use keras_mnv2.deploy.qat.quantize for the TFMOT path)")
    if is_keras_quantized(model):
        raise InputError(f"model {model.name!r} is already quantization-aware")
    nodes = _nodes_in_order(model)
    plan = quantization_plan(model)
    consumers = _consumers(nodes)
    outputs = _output_ids(model)
    folds = {}  # conv name -> its BN layer
    for node in nodes:
        layer = _node_layer(node)
        if plan[layer.name].startswith("folded into "):
            folds[plan[layer.name][len("folded into "):]] = layer
    bn_outputs = {}  # conv name -> the BN's original output tensor
    for node in nodes:
        layer = _node_layer(node)
        if type(layer).__name__ == "BatchNormalization" and layer.name in {
                bn.name for bn in folds.values()}:
            conv = _producer(_node_inputs(node)[0])
            bn_outputs[conv.name] = _node_outputs(node)[0]
    quantizers = {}  # layer name -> ActivationQuantizer after it

    def needs_quantizer(original, layer):
        """Whether the tensor ``original`` (made by ``layer``) gets an output quantizer."""
        users = consumers.get(id(original), [])
        kind = type(layer).__name__
        fused_relu = len(users) == 1 and id(original) not in outputs and _is_relu(users[0])
        if kind in _FOLDED or kind in ("Dense", "Add"):
            if _activation_name(layer) == "softmax":
                return False
            return not fused_relu
        return plan[layer.name] == "int8 output"

    def add_quantizer(layer, tensor, original):
        init = (0.0, 6.0) if _is_relu(layer) and _relu6(layer) else (-6.0, 6.0)
        quantizer = ActivationQuantizer(init_min=init[0], init_max=init[1],
                                        name=f"{layer.name}_quant")
        quantizers[layer.name] = quantizer
        return quantizer(tensor)

    weighted = {}  # new layer name -> (source layer, BN or None)

    def rewrite(node, layer, new, clones):
        kind = type(layer).__name__
        if kind == "BatchNormalization" and plan[layer.name].startswith("folded"):
            return True  # done by its convolution
        if kind in _FOLDED or kind == "Dense":
            config = layer.get_config()
            bn = folds.get(layer.name)
            if bn is not None:
                config["use_bias"] = True
            softmax = kind == "Dense" and _activation_name(layer) == "softmax"
            if softmax:
                config["activation"] = "linear"
            config.pop("quantization_config", None)
            cls = {"Conv2D": QuantConv2D, "DepthwiseConv2D": QuantDepthwiseConv2D,
                   "Dense": QuantDense}[kind]
            clone = cls.from_config(config)
            weighted[layer.name] = (layer, bn)
            (x,) = [quantized_inputs.get(id(t), new.get(id(t))) for t in _node_inputs(node)]
            y = clone(x)
            original = bn_outputs.get(layer.name, _node_outputs(node)[0])
            if needs_quantizer(original, layer) or softmax:
                y = add_quantizer(layer, y, original)
            if softmax:
                y = keras.layers.Softmax(name=f"{layer.name}_softmax")(y)
            new[id(original)] = y
            return True
        if kind == "InputLayer":
            return False
        args, kwargs = _call_arguments(node)
        if layer.name not in clones:
            from keras_mnv2.blocks import clone_layer

            clones[layer.name] = clone_layer(layer)
        view = {**new, **quantized_inputs}
        result = clones[layer.name](*_replace(args, view), **_replace(kwargs, view))
        (original,) = _node_outputs(node)
        if needs_quantizer(original, layer):
            result = add_quantizer(layer, result, original)
        new[id(original)] = result
        return True

    # The input quantizer: the replay makes a fresh Input, every consumer reads it through
    # input_quant (one quantizer per model input).
    def rewrite_with_input(node, layer, new, clones):
        for tensor in _node_inputs(node):
            if id(tensor) in input_ids and id(tensor) not in quantized_inputs:
                source = _producer(tensor)
                quantizer = ActivationQuantizer(name=f"{source.name}_quant"
                                                if len(input_ids) > 1 else "input_quant")
                quantizers[source.name] = quantizer
                quantized_inputs[id(tensor)] = quantizer(new[id(tensor)])
        return rewrite(node, layer, new, clones)

    from keras_mnv2.profiler import _flatten

    input_ids = {id(t) for t in _flatten(model.inputs)}
    quantized_inputs = {}
    qat_model = _replay(model, keras, nodes, rewrite_with_input,
                        name=name or f"{model.name}_qat")
    for new_name, (source, bn) in weighted.items():
        target = qat_model.get_layer(new_name)
        kernel, *bias = [np.asarray(w) for w in source.get_weights()]
        bias = bias[0] if bias else None
        if bn is not None:
            scale, shift = _bn_fold(bn)
            if type(source).__name__ == "DepthwiseConv2D":
                kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
            else:
                kernel = kernel * scale
            bias = shift + (bias * scale if bias is not None else 0.0)
        target.kernel.assign(kernel.astype("float32"))
        if bias is not None:
            target.bias.assign(np.asarray(bias, "float32"))
        target.reset_kernel_range()
    if calibration_data is not None:
        calibrate(qat_model, calibration_data, num_calibration_images)
    if log is not None:
        left = [n for n, how in plan.items() if how.startswith("float")]
        log(f"quantize_keras {model.name}: {len(weighted)} weighted layers and "
            f"{len(quantizers)} activation quantizers, "
            + (f"{len(left)} layers left float: {', '.join(left)}" if left
               else "no layer left float"))
    return qat_model


def _call_arguments(node):
    from keras_mnv2.split import _call_arguments as arguments

    return arguments(node)


def _replace(structure, new):
    from keras_mnv2.split import _replace as replace

    return replace(structure, new)


# ----------------------------------------------------------------------------------------------
# Ranges


def activation_quantizers(model):
    """The model's ``ActivationQuantizer`` layers, in graph order."""
    return [layer for layer in model.layers if isinstance(layer, ActivationQuantizer)]


def is_keras_quantized(model):
    """Whether ``model`` is a Keras 3 quantization-aware model from ``quantize_keras``."""
    return any(isinstance(layer, QUANT_LAYERS) for layer in getattr(model, "layers", ()))


class float_pass:
    """``with float_pass(qat_model):`` the model computes without fake quantization (the
    folded float model), e.g. to calibrate the activation ranges."""

    def __init__(self, model):
        self.layers = [layer for layer in model.layers if isinstance(layer, QUANT_LAYERS)]

    def __enter__(self):
        for layer in self.layers:
            layer.enabled = False
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.enabled = True
        return False


def calibrate(qat_model, data, limit=100, batch_size=16):
    """Sets every activation range to the [min, max] (widened to hold 0) that its input takes
    over up to ``limit`` images of ``data`` in a float pass (no fake quantization, as
    post-training calibration sees the float model); weight ranges are reset from the kernels.
    Returns the number of ranges set."""
    if isinstance(data, np.ndarray) and data.ndim == 4:  # no TensorFlow needed (JAX backend)
        if tuple(data.shape[1:]) != tuple(qat_model.input_shape[1:]):
            raise InputError(f"calibration images of shape {tuple(data.shape[1:])} != model input "
                             f"shape {tuple(qat_model.input_shape[1:])}")
        images = data[:limit].astype("float32")
    else:
        from keras_mnv2.deploy.calibration import calibration_images

        images = np.concatenate(calibration_images(data, qat_model.input_shape[1:], limit))
    quantizers = activation_quantizers(qat_model)
    if not quantizers:
        raise InputError(f"model {qat_model.name!r} has no activation quantizer")
    probe = keras.Model(qat_model.inputs, [q.input for q in quantizers])
    weight_layers = [layer for layer in qat_model.layers if isinstance(layer, _WeightQuantizing)]
    with float_pass(qat_model):
        low = np.full(len(quantizers), np.inf)
        high = np.full(len(quantizers), -np.inf)
        for start in range(0, len(images), batch_size):
            values = probe(images[start:start + batch_size], training=False)
            values = values if isinstance(values, (list, tuple)) else [values]
            for i, value in enumerate(values):
                value = ops.convert_to_numpy(value)
                low[i] = min(low[i], float(value.min()))
                high[i] = max(high[i], float(value.max()))
    for q, lo, hi in zip(quantizers, low, high):
        q.range_min.assign(min(lo, 0.0))
        q.range_max.assign(max(hi, 0.0))
    for layer in weight_layers:
        layer.reset_kernel_range()
    return len(quantizers)


def uncalibrated(qat_model):
    """Names of activation quantizers whose range is empty (such a range quantizes to 0)."""
    return [q.name for q in activation_quantizers(qat_model)
            if float(ops.convert_to_numpy(q.range_min)) == float(
                ops.convert_to_numpy(q.range_max))]


def output_steps(qat_model):
    """The quantization step (scale) of each model output's last quantizer, in output order
    (None for an output that no quantizer ends, e.g. a softmax)."""
    from keras_mnv2.profiler import _flatten

    steps = []
    for tensor in _flatten(qat_model.outputs):
        layer = _producer(tensor)
        while not isinstance(layer, ActivationQuantizer) and type(layer).__name__ in PASSTHROUGH:
            layer = _producer(layer.input)
        if isinstance(layer, ActivationQuantizer):
            low = float(ops.convert_to_numpy(layer.range_min))
            high = float(ops.convert_to_numpy(layer.range_max))
            steps.append((high - low) / 255.0)
        else:
            steps.append(None)
    return steps


__all__ = [
    "ActivationQuantizer",
    "QUANTIZE_OUTPUT",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "activation_quantizers",
    "calibrate",
    "float_pass",
    "is_keras_quantized",
    "output_steps",
    "quantization_plan",
    "quantize_keras",
    "uncalibrated",
]
