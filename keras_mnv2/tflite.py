"""TFLite (LiteRT) conversion and execution helpers."""

import contextlib
import io

import numpy as np


def convert_float(model):
    """Converts a Keras 3 model to a float32 TFLite flatbuffer (bytes)."""
    import tensorflow as tf

    from keras_mnv2.frameworks import framework_of

    framework_of(model)  # raises TypeError for anything but a Keras model
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # the SavedModel export prints its signature
        return converter.convert()


def interpreter(model_content, num_threads=1):
    """An allocated ai_edge_litert Interpreter for a flatbuffer (bytes) or a .tflite path."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model_content, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(model_content), num_threads=num_threads)
    else:
        interp = Interpreter(model_path=str(model_content), num_threads=num_threads)
    interp.allocate_tensors()
    return interp


def run(model_content, inputs, num_threads=1):
    """Runs a TFLite model on a batch, one example at a time; returns the stacked first output.

    Quantized inputs and outputs are (de)quantized with the tensors' own scale and zero point.
    """
    interp = interpreter(model_content, num_threads)
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
