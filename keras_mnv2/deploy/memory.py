"""Measured activation memory of a TFLite model (paper section 5.1, memory-efficient inference).

``tflite_arena_bytes`` reads the real tensor arena from the TFLite interpreter. The Python API has
no call that returns the arena's size, but every activation tensor of an allocated interpreter is
a view into the arena, and ``Interpreter.tensor(i)()`` exposes its address. The measurement is
the span of those buffers, from the lowest start to the highest end, after
``allocate_tensors()``: the bytes TFLite's arena planner lays out for the activations (the
model's input and output, which it keeps alive throughout, intermediate tensors and kernel
scratch tensors, with one buffer reused by tensors whose lifetimes do not overlap, and in-place
element-wise ops). Weights live in the model buffer and are not counted; neither is the
interpreter's own bookkeeping.

The interpreter (``keras_mnv2.deploy.tflite.interpreter(..., delegates=False)``) has the
built-in kernels and no default delegate (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
so that every activation is planned in the arena, as on a fixed-arena target (TFLite Micro, an NPU). With the default XNNPACK delegate (the
fast path the benchmarks time) the delegated tensors live in XNNPACK's own workspace instead,
which this does not measure.

The arena depends on the op order in the flatbuffer, and the converter's order of parallel
branches follows op names: a split block can come out level by level, all groups side by side
(it does for the split Conv1 + block 0 of a model named ``mobilenetv2_...``, which sorts after
the input's name). ``reorder_ops`` rewrites the order memory-aware, one group at a time
(``keras_mnv2.deploy.export.convert``, the one converter, applies it to every split model, so
the benchmarks measure the files export ships); ``tflite_ops`` lists the order.
"""

import numpy as np

# Tensors below this size are skipped: shape vectors and scalars that TFLite computes when it
# prepares the model and keeps outside the arena (their bytes could not change the figure).
_MIN_TENSOR_BYTES = 64
_ALIGNMENT = 64  # TFLite's arena alignment of tensor buffers


def tflite_arena_bytes(model_content):
    """Bytes of the TFLite tensor arena of a flatbuffer (bytes) or .tflite path (see module doc).

    Raises ValueError when the model has no activation tensors to measure.
    """
    from keras_mnv2.deploy.tflite import interpreter

    interp = interpreter(model_content, delegates=False)
    native = interp._interpreter
    constants = set()
    produced = set()
    for op in interp._get_ops_details():
        constants.update(int(i) for i in op["inputs"] if i >= 0)
        produced.update(int(i) for i in op["outputs"] if i >= 0)
    inputs = {int(d["index"]) for d in interp.get_input_details()}
    constants -= produced | inputs
    low, high, total = None, None, 0
    for index in range(native.NumTensors(0)):
        if index in constants:
            continue
        try:
            native.TensorSize(index, 0)  # reading a tensor without a shape would crash
            buffer = native.tensor(native, index)
        except ValueError:  # a tensor without shape or data (unused)
            continue
        if not isinstance(buffer, np.ndarray) or buffer.nbytes < _MIN_TENSOR_BYTES:
            continue
        start = buffer.ctypes.data
        low = start if low is None else min(low, start)
        high = start + buffer.nbytes if high is None else max(high, start + buffer.nbytes)
        total += buffer.nbytes + _ALIGNMENT
        del buffer
    if low is None:
        raise ValueError("the TFLite model has no activation tensors to measure")
    if high - low > total:  # the buffers cannot all lie in one arena
        raise RuntimeError(
            f"activation buffers span {high - low} bytes, more than their {total} bytes: some "
            "tensor lies outside the TFLite arena"
        )
    return high - low


# Bytes per element of the TFLite schema's TensorType values (others count 4).
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 17: 1}


def reorder_ops(model_content):
    """The flatbuffer with each subgraph's ops in a memory-aware order (returns bytes).

    The TFLite runtime runs ops in the order of the flatbuffer, and the converter's order of
    parallel branches follows op names (a split-expansion block that reads the model input, say,
    comes out level by level, all groups side by side). This rewrites the order with
    ``keras_mnv2.profiler.memory_aware_order``, the order ``profile(schedule="memory")`` counts
    (one group of a split block at a time); ops, tensors and weights are unchanged. The model
    inputs and outputs are kept alive throughout, as the TFLite arena keeps them.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    from keras_mnv2.profiler import memory_aware_order

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    for subgraph in model.subgraphs:
        operators = list(subgraph.operators or [])
        if not operators:
            continue
        sizes = {}
        for index, tensor in enumerate(subgraph.tensors):
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            if buffer is not None and buffer.data is not None and len(buffer.data):
                continue  # a constant: not in the arena
            shape = [] if tensor.shape is None else [int(d) for d in tensor.shape]
            sizes[index] = int(np.prod(shape)) * _TYPE_BYTES.get(tensor.type, 4)
        order = memory_aware_order(
            [[int(i) for i in op.inputs if i >= 0] for op in operators],
            [[int(i) for i in op.outputs if i >= 0] for op in operators],
            sizes,
            keep={int(i) for i in list(subgraph.inputs) + list(subgraph.outputs)},
        )
        subgraph.operators = [operators[index] for index in order]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_ops(model_content):
    """The ops of a TFLite model in execution order: [(op name, [output shapes])]."""
    from keras_mnv2.deploy.tflite import interpreter

    interp = interpreter(model_content, delegates=False)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    return [
        (op["op_name"], [tuple(int(v) for v in details[i]["shape"]) for i in op["outputs"]])
        for op in interp._get_ops_details()
    ]
