import keras
import pytest

import keras_mnv2

# TF-slim table (../shared/reference/PAPER_NUMBERS.md): millions of MACs, 1001-way top.
TF_SLIM_MADDS = {
    (1.4, 224): 582, (1.3, 224): 509,
    (1.0, 224): 300, (1.0, 192): 221, (1.0, 160): 154, (1.0, 128): 99, (1.0, 96): 56,
    (0.75, 224): 209, (0.75, 192): 153, (0.75, 160): 107, (0.75, 128): 69, (0.75, 96): 39,
    (0.5, 224): 97, (0.5, 192): 71, (0.5, 160): 50, (0.5, 128): 32, (0.5, 96): 18,
    (0.35, 224): 59, (0.35, 192): 43, (0.35, 160): 30, (0.35, 128): 20, (0.35, 96): 11,
}


@pytest.mark.parametrize("alpha,size", sorted(TF_SLIM_MADDS))
def test_madds_match_tf_slim_table(alpha, size):
    model = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(size, size, 3), classes=1001)
    madds = keras_mnv2.profile(model).madds / 1e6
    expected = TF_SLIM_MADDS[(alpha, size)]
    assert abs(madds - expected) <= max(0.02 * expected, 1.0), (madds, expected)


def test_paper_table_4_figures():
    p = keras_mnv2.profile(keras_mnv2.MobileNetV2(alpha=1.0))
    assert p.params == 3_538_984
    assert round(p.madds / 1e6) == 301  # paper: 300M


def _tiny_chain():
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(x)
    y = keras.layers.ReLU(name="relu")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    y = keras.layers.Dense(2, name="dense")(y)
    return keras.Model(x, y, name="chain")


def test_hand_checked_chain():
    p = keras_mnv2.profile(_tiny_chain())
    rows = {r.name: r for r in p.layers}
    assert rows["conv"].madds == 8 * 8 * 4 * 3 * 3 * 3  # 6912
    assert rows["dense"].madds == 4 * 2
    assert p.madds == 6912 + 8
    assert p.params == 3 * 3 * 3 * 4 + 4 * 2 + 2
    # conv: input 192 + output 256 floats; relu: conv out 256 + relu out 256 floats (input freed)
    assert rows["conv"].live_bytes == (192 + 256) * 4
    assert rows["relu"].live_bytes == 512 * 4
    assert rows["pool"].live_bytes == (256 + 4) * 4
    assert p.peak_activation_bytes == 2048
    assert p.peak_layer == "relu"


def test_hand_checked_branches_keep_tensors_alive():
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 1, name="a")(x)
    b = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="b")(x)
    b = keras.layers.Conv2D(4, 1, name="b2")(b)
    out = keras.layers.Add(name="add")([a, b])
    p = keras_mnv2.profile(keras.Model(x, out))
    rows = {r.name: r for r in p.layers}
    assert rows["b"].madds == 8 * 8 * 6 * 9
    assert rows["b2"].madds == 8 * 8 * 6 * 4
    # Keras runs nodes deepest first: b, then a and b2 (same depth), then add.
    live = {name: rows[name].live_bytes // 4 for name in rows}
    assert [r.name for r in p.layers] == ["b", "a", "b2", "add"]
    assert live["b"] == 192 + 384
    assert live["a"] == 192 + 384 + 256  # x is still needed by a
    assert live["b2"] == 384 + 256 + 256  # x freed after a, its last consumer
    assert live["add"] == 256 * 3
    assert p.peak_activation_bytes == (384 + 256 + 256) * 4
    assert p.peak_layer == "b2"
    assert keras_mnv2.profile(keras.Model(x, out), bytes_per_element=1).peak_activation_bytes \
        == 384 + 256 + 256


def test_mobilenet_peak_is_the_first_expanded_tensor():
    p = keras_mnv2.profile(keras_mnv2.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3)))
    # block_1 pads its 112x112x96 expansion to 113x113x96; both are alive at that step.
    assert p.peak_layer == "block_1_pad"
    assert p.peak_activation_bytes == (112 * 112 * 96 + 113 * 113 * 96) * 4
    peaks = p.block_peaks()
    assert peaks["block_1"] == p.peak_activation_bytes
    assert peaks["block_16"] < peaks["block_1"]


def test_table_prints_every_layer_and_totals():
    model = _tiny_chain()
    text = str(keras_mnv2.profile(model))
    assert "conv" in text and "6,912" in text
    assert "total: 118 parameters" in text


def test_dynamic_input_is_refused():
    model = keras_mnv2.MobileNetV2(alpha=0.35, include_top=False)
    with pytest.raises(ValueError, match="static input sizes"):
        keras_mnv2.profile(model)
