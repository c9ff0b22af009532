import keras
import numpy as np
import pytest

import keras_mnv2
from keras_mnv2.deploy import export, memory, tflite
from keras_mnv2.blocks import inverted_residual
from keras_mnv2.profiler import memory_aware_order
from keras_mnv2.split import split_expansion


def _block(size, channels, splits, seed=0):
    """One stride-1 inverted residual (expansion 6, residual connection) with random weights."""
    x = keras.Input((size, size, channels))
    y = inverted_residual(keras, x, 6, channels, 1, block_id=1, splits=splits)
    model = keras.Model(x, y, name=f"block_x{splits}")
    rng = np.random.RandomState(seed)
    model.set_weights([rng.uniform(0.5, 1.0, w.shape) for w in model.get_weights()])
    return model


def test_hand_checked_peak_of_a_split_block():
    # 8x8 input with 4 channels, expanded to 24, projected back to 4: 64 px * 4 bytes = 256
    # bytes per channel. Whole: expand (x 4 + 24 ch), then BN (x 4 + expand 24 + BN 24) = 52 ch.
    whole = keras_mnv2.profile(_block(8, 4, 1), schedule="memory")
    assert whole.peak_activation_bytes == 52 * 256
    assert whole.peak_layer == "block_1_expand_BN"
    # Two groups of 12, one group at a time: at group 1's BN, x 4 + group 0's projection 4 +
    # group 1's expansion 12 + its BN 12 = 32 ch.
    split = _block(8, 4, 2)
    memory_order = keras_mnv2.profile(split, schedule="memory")
    assert memory_order.peak_activation_bytes == 32 * 256
    names = [row.name for row in memory_order.layers]
    first = 0 if names.index("block_1_expand_s0") < names.index("block_1_expand_s1") else 1
    assert memory_order.peak_layer == f"block_1_expand_BN_s{1 - first}"
    assert names.index(f"block_1_project_s{first}") < names.index(f"block_1_expand_s{1 - first}")
    # Keras's own order runs both groups level by level: x 4 + expand 12 + 12 + BN 12 = 40 ch.
    keras_order = keras_mnv2.profile(split)
    assert keras_order.peak_activation_bytes == 40 * 256
    assert keras_order.schedule == "keras" and memory_order.schedule == "memory"
    assert keras_order.block_peaks()["block_1"] == 40 * 256
    with pytest.raises(ValueError, match="schedule must be one of"):
        keras_mnv2.profile(split, schedule="fastest")


def test_memory_aware_order_frees_first_then_goes_depth_first():
    # op 0: a -> b (grows); op 1: a -> c (grows); op 2: b -> d (frees b); op 3: c, d -> e.
    inputs = [["a"], ["a"], ["b"], ["c", "d"]]
    outputs = [["b"], ["c"], ["d"], ["e"]]
    sizes = {"a": 1, "b": 8, "c": 8, "d": 1, "e": 1}
    assert memory_aware_order(inputs, outputs, sizes, keep={"a"}) == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="acyclic"):
        memory_aware_order([["y"], ["x"]], [["x"], ["y"]], {})


def test_split_mobilenet_computed_peak_halves():
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3))
    whole = keras_mnv2.profile(model, schedule="memory")
    assert whole.peak_activation_bytes == keras_mnv2.profile(model).peak_activation_bytes
    # block_1 pads its 48x48x48 expansion to 49x49x48; both are alive at that step.
    assert whole.peak_activation_bytes == (48 * 48 * 48 + 49 * 49 * 48) * 4
    split = keras_mnv2.profile(split_expansion(model, 6), schedule="memory")
    assert split.peak_activation_bytes < 0.5 * whole.peak_activation_bytes
    assert split.madds == whole.madds and split.params == whole.params


def test_tflite_arena_hand_checked():
    # 32x32 px, 16 channels expanded to 96: 4096 bytes per channel in float32. TFLite fuses BN
    # and ReLU6 into the convolutions and keeps the model input alive. Whole: input 16 +
    # expansion 96 + depthwise 96 = 208 channels.
    whole = export.convert(_block(32, 16, 1), output="raw")
    assert memory.tflite_arena_bytes(whole) == 208 * 4096
    # Three groups of 32, one at a time: input 16 + running sum 16 + the group's expansion 32
    # and depthwise output 32 = 96 channels.
    split = export.convert(_block(32, 16, 3), output="raw")  # folded and reordered, as shipped
    assert memory.tflite_arena_bytes(split) == 96 * 4096
    ops = memory.tflite_ops(split)
    # The groups survive conversion as separate, smaller tensors, computed one after the other.
    kinds = [(name, shapes[0][-1]) for name, shapes in ops]
    assert kinds[:7] == [("CONV_2D", 32), ("DEPTHWISE_CONV_2D", 32), ("CONV_2D", 16),
                         ("CONV_2D", 32), ("DEPTHWISE_CONV_2D", 32), ("CONV_2D", 16), ("ADD", 16)]
    assert not any(shapes[0][-1] == 96 for _, shapes in ops)


@pytest.mark.slow
def test_split_mobilenet_survives_tflite_conversion(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                   expansion_splits=(3, 5) + (1,) * 15, name="zz_model")
    content = export.convert(model, output="raw", memory_order=False)  # the converter's order
    reordered = memory.reorder_ops(content)
    shapes = [shapes[0] for _, shapes in memory.tflite_ops(reordered)]
    # Conv1 + block 0: 16 channels in groups of 6, 5, 5 (projected to 8); block 1: 48 channels
    # in groups of 10, 10, 10, 9, 9.
    assert [s[-1] for s in shapes[:4]] == [6, 6, 8, 5]
    assert sum(s == (1, 48, 48, 10) for s in shapes) == 3
    assert sum(s == (1, 48, 48, 9) for s in shapes) == 2
    assert (1, 48, 48, 48) not in shapes
    x = images(n=2)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(tflite.run(reordered, x), expected, atol=1e-4)
    np.testing.assert_array_equal(tflite.run(reordered, x), tflite.run(content, x))
    assert memory.tflite_arena_bytes(reordered) <= memory.tflite_arena_bytes(content)
    whole = export.convert(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                                  include_top=False), output="raw")
    assert memory.tflite_arena_bytes(reordered) < 0.8 * memory.tflite_arena_bytes(whole)


def test_arena_of_a_file_and_bad_input(tmp_path):
    content = export.convert(_block(8, 4, 1), output="raw")
    path = tmp_path / "block.tflite"
    path.write_bytes(content)
    assert memory.tflite_arena_bytes(str(path)) == memory.tflite_arena_bytes(content)
    with pytest.raises(ValueError, match="representative_data is empty"):
        export.convert(_block(8, 4, 1), "int8", np.zeros((0, 8, 8, 4)), output="raw")


@pytest.mark.slow
def test_int8_sum_of_projections_stays_close(images):
    """Full-int8 PTQ of a split model stays close to the float model: each partial projection
    is requantized to int8 before the sum, which adds rounding (measured: about 1.5 times the
    unsplit int8 model's error), but no more than that."""
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                   bn_momentum=0.0)
    calibration = images(n=8, seed=1)
    model(calibration, training=True)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, mean, variance + 0.01])
    x = images(n=4, seed=2)
    expected = model.predict(x, verbose=0)
    settings = dict(mode="int8", representative_data=calibration, io_dtype="int8", output="raw")
    whole = export.convert(model, **settings)
    split = export.convert(split_expansion(model, 3), **settings)  # folded and reordered
    whole_error = np.abs(tflite.run(whole, x) - expected)
    split_error = np.abs(tflite.run(split, x) - expected)
    step = tflite.interpreter(split).get_output_details()[0]["quantization"][0]
    assert whole_error.mean() < step  # the reference: unsplit int8 against float
    assert split_error.mean() < 2.0 * whole_error.mean()
    assert split_error.max() < 3.0 * whole_error.max()
    assert memory.tflite_arena_bytes(split) < memory.tflite_arena_bytes(whole)
