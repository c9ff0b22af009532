"""Running TFLite (LiteRT) models: the one place that makes interpreters.

Every interpreter of the package comes from ``interpreter`` (the default XNNPACK path, or the
built-in kernels alone with ``delegates=False``, as the arena measurement and op listings need);
conversion is ``keras_mnv2.deploy.export.convert``, the one converter.
"""

import numpy as np


def interpreter(model_content, num_threads=1, delegates=True):
    """An allocated ai_edge_litert Interpreter for a flatbuffer (bytes) or a .tflite path.

    ``delegates=False`` leaves out the default XNNPACK delegate (the built-in kernels only).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model_content, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(model_content), **kwargs)
    else:
        interp = Interpreter(model_path=str(model_content), **kwargs)
    interp.allocate_tensors()
    return interp


def sample_input(detail, seed=0):
    """A random input for a tensor ``detail`` (``get_input_details()`` entry): uniform in
    [-1, 1] for float, the dtype's whole range for integers."""
    rng = np.random.RandomState(seed)
    shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.randint(info.min, int(info.max) + 1, shape).astype(dtype)
    return rng.uniform(-1, 1, shape).astype(dtype)


def run(model_content, inputs, num_threads=1, delegates=True):
    """Runs a TFLite model on a batch, one example at a time; returns the stacked first output.

    Quantized inputs and outputs are (de)quantized with the tensors' own scale and zero point.
    """
    interp = interpreter(model_content, num_threads, delegates)
    input_detail = interp.get_input_details()[0]
    output_detail = interp.get_output_details()[0]
    results = []
    for example in np.asarray(inputs):
        x = example[None]
        scale, zero_point = input_detail["quantization"]
        if input_detail["dtype"] != np.float32 and scale:
            x = np.round(x / scale + zero_point)
        interp.set_tensor(input_detail["index"], x.astype(input_detail["dtype"]))
        interp.invoke()
        y = interp.get_tensor(output_detail["index"])
        scale, zero_point = output_detail["quantization"]
        if output_detail["dtype"] != np.float32 and scale:
            y = (y.astype(np.float32) - zero_point) * scale
        results.append(y[0])
    return np.stack(results)


def _dequantize(value, detail):
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        return (value.astype(np.float32) - zero_point) * scale
    return value


def _quantize(value, detail):
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
        info = np.iinfo(detail["dtype"])
        value = np.clip(np.round(value / scale + zero_point), info.min, info.max)
    return value.astype(detail["dtype"])


def run_signature(model_content, inputs, num_threads=1, delegates=True):
    """Runs a single-input TFLite model's signature on a batch, one example at a time.

    Returns ``{output name: stacked array}``; quantized inputs and outputs are (de)quantized with
    the tensors' own scale and zero point (integer outputs such as an argmax mask stay integer).
    """
    interp = interpreter(model_content, num_threads, delegates)
    runner = interp.get_signature_runner()
    (input_name, input_detail), = runner.get_input_details().items()
    output_details = runner.get_output_details()
    results = {name: [] for name in output_details}
    for example in np.asarray(inputs, dtype=np.float32):
        outputs = runner(**{input_name: _quantize(example[None], input_detail)})
        for name, value in outputs.items():
            results[name].append(_dequantize(value, output_details[name])[0])
    return {name: np.stack(values) for name, values in results.items()}


def op_details(model_content):
    """The operators of a TFLite model, in execution order, as seen without delegates:
    a list of ``(op name, [output dtypes])``."""
    interp = interpreter(model_content, delegates=False)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return [(op["op_name"], [dtypes.get(i, "?") for i in op["outputs"]])
            for op in interp._get_ops_details()]


def op_counts(model_content):
    """{op name: count} of a TFLite model (without delegates)."""
    counts = {}
    for name, _ in op_details(model_content):
        counts[name] = counts.get(name, 0) + 1
    return counts


def float_ops(model_content):
    """Names of the ops that compute in floating point (a float32/float16 output), leaving out
    QUANTIZE and DEQUANTIZE: in a full-integer model, what was not quantized."""
    return [name for name, dtypes in op_details(model_content)
            if name not in ("QUANTIZE", "DEQUANTIZE")
            and any(d in ("float32", "float16") for d in dtypes)]


def _buffer_size(model, index):
    """Bytes of constant data in buffer ``index``: inline (``data``) or, as LiteRT Quantizer
    writes them, after the flatbuffer (``offset`` > 1 into the file, ``size`` bytes; 0 and 1
    mean no offset)."""
    if index >= len(model.buffers):
        return 0
    buffer = model.buffers[index]
    if buffer.data is not None and len(buffer.data):
        return len(buffer.data)
    return int(buffer.size) if buffer.offset > 1 else 0


def size_breakdown(model_content):
    """Where the bytes of a .tflite file go: {"weights": constant tensor data, "quantization":
    the per-tensor and per-channel quantization parameters, "other": the rest (graph,
    signatures, names, metadata), "total": the file size, "channels": the number of quantized
    channels}.

    The TFLite schema stores each quantization scale as a float32 and each zero point as an
    int64, per output channel for per-channel weights. An int8 model therefore carries 12 bytes
    per quantized channel on top of its 1-byte weights: for thin layers (a 3x3 depthwise channel
    has 9 weights) that overhead is what keeps int8 files above a quarter of the float size.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    if not isinstance(model_content, (bytes, bytearray)):
        with open(model_content, "rb") as f:
            model_content = f.read()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    constant = {}  # buffer index -> bytes of data (a buffer shared by tensors counts once)
    quantization = channels = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            size = _buffer_size(model, tensor.buffer)
            if size:
                constant[tensor.buffer] = size
            q = tensor.quantization
            if q is None:
                continue
            for values, width in ((q.scale, 4), (q.zeroPoint, 8), (q.min, 4), (q.max, 4)):
                quantization += 0 if values is None else len(values) * width
            if q.scale is not None and len(q.scale) > 1:
                channels += len(q.scale)
    weights = sum(constant.values())
    total = len(model_content)
    return {"weights": weights, "quantization": quantization,
            "other": total - weights - quantization, "total": total, "channels": channels}
