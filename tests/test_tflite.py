import numpy as np

import keras_mnv2
from keras_mnv2.deploy import export, tflite


def test_float_tflite_agrees_with_keras(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=10,
                                   classifier_activation=None)
    rng = np.random.RandomState(4)
    # non-trivial batch-norm statistics (1-D weights); kernels keep their initialisation
    model.set_weights([w + rng.uniform(0, 0.1, w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    content = export.convert(model, output="raw")
    x = images(3)
    expected = model.predict(x, verbose=0)
    print("max |logit|", np.abs(expected).max())
    assert np.abs(expected).max() > 1e-2  # logits, not a constant
    np.testing.assert_allclose(tflite.run(content, x), expected, atol=1e-4)


def test_output_stride_16_backbone_converts(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                   output_stride=16)
    x = images(1)
    out = tflite.run(export.convert(model, output="raw"), x)
    assert out.shape == (1, 6, 6, 1280)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-4)


def test_size_breakdown_counts_weights_and_per_channel_parameters():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 108 weights + 4 biases
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 36 weights + 4 biases
    model = keras.Model(inputs, x)
    # distinct values: the converter stores identical constants (two zero biases) only once
    rng = np.random.RandomState(1)
    model.set_weights([rng.uniform(-1, 1, w.shape) for w in model.get_weights()])
    float_sizes = tflite.size_breakdown(export.convert(model, output="raw"))
    assert float_sizes["weights"] == 4 * model.count_params() == 4 * 152
    assert float_sizes["quantization"] == 0 and float_sizes["channels"] == 0
    assert float_sizes["weights"] + float_sizes["other"] == float_sizes["total"]

    samples = np.random.RandomState(0).uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    int8 = tflite.size_breakdown(export.convert(model, "int8", samples, io_dtype="int8",
                                                output="raw"))
    assert int8["weights"] == (108 + 36) * 1 + (4 + 4) * 4  # int8 kernels, int32 biases
    # per channel: the two kernels and the two biases, 4 output channels each
    assert int8["channels"] == 4 * 4
    # a float32 scale and an int64 zero point per channel, plus per-tensor activation params
    assert int8["quantization"] >= 12 * int8["channels"]
    assert int8["weights"] + int8["quantization"] + int8["other"] == int8["total"]


def test_size_breakdown_reads_litert_quantizer_buffers():
    import keras
    from tensorflow.lite.tools import flatbuffer_utils

    # LiteRT Quantizer stores buffers of 1 KB or more after the flatbuffer (offset + size) once
    # they add up to 256 KB: one 3x3 conv 64 -> 512 is past both
    inputs = keras.Input((4, 4, 64))
    model = keras.Model(inputs, keras.layers.Conv2D(512, 3, padding="same")(inputs))
    rng = np.random.RandomState(1)
    model.set_weights([rng.uniform(-1, 1, w.shape) for w in model.get_weights()])
    samples = rng.uniform(-1, 1, (2, 1, 4, 4, 64)).astype("float32")
    content = export.litert_quantize(export.convert(model, output="raw"), samples)
    buffers = flatbuffer_utils.convert_bytearray_to_object(bytearray(content)).buffers
    assert any(b.offset > 1 for b in buffers)  # the case under test
    sizes = tflite.size_breakdown(content)
    assert sizes["weights"] == 3 * 3 * 64 * 512 * 1 + 512 * 4  # int8 kernel, int32 bias
    assert sizes["channels"] == 2 * 512  # kernel and bias, per channel
    assert sizes["weights"] + sizes["quantization"] + sizes["other"] == sizes["total"]
