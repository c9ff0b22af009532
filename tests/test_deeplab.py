import numpy as np
import pytest

import keras
import keras_mnv2
from keras_mnv2.deploy import export, tflite
from keras_mnv2.segmentation.deeplab import DeepLabV3, backbone_channels, deeplab_atrous_rates, head_layer_names

VOC = dict(num_classes=21, input_shape=(513, 513, 3))
TINY = dict(num_classes=5, alpha=0.35, dropout_rate=0.0, bn_momentum=0.0)


def _within(value, target, tolerance):
    return abs(value - target) <= tolerance * target


def _head_params(num_classes, channels, aspp):
    """Hand count: conv kernels + BN (4 x 256 each) of the head, logits with bias."""
    branch_1x1 = channels * 256 + 4 * 256
    branches = 2 * branch_1x1 + (3 * (9 * channels * 256 + 4 * 256) if aspp else 0)
    projection = (5 if aspp else 2) * 256 * 256 + 4 * 256
    return branches + projection + 256 * num_classes + num_classes


def _calibrated(model, x, min_variance=0.05):
    """Batch-norm statistics from a forward pass in training mode (the TINY builds use BN momentum
    0, so the moving statistics become the batch's): random kernels alone shrink the signal to
    ~1e-10 by the logits, which would let any comparison pass. Variances are floored: a channel
    nearly constant over a 2-image batch would otherwise scale float round-off up 30x."""
    model(x, training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, mean, np.maximum(variance, min_variance)])
    return model


# Paper Table 7 (513x513, 21 classes). The profiler counts convolutions only, as the TF-slim
# table does. The resizes and the pooling cannot explain any gap: the bilinear logits upsampling
# is ~4 MACs per output value (513 * 513 * 21 * 4 = 22M MAdds) and the image pooling 0.35M, under
# 1% of either total. Without ASPP the conv count matches (2.74B vs 2.75B); with ASPP it is 0.44B
# under the paper's 5.8B (7.5%) while the parameters match to 1%, so the three atrous 3x3 branches
# (2.41B) are counted as plain dense convolutions at 33x33, as the parameters say they are.
@pytest.mark.parametrize(
    "aspp,params,madds,madds_tolerance",
    [(False, 2.11e6, 2.75e9, 0.05), (True, 4.52e6, 5.8e9, 0.10)],
)
def test_size_parity_with_paper_table_7(aspp, params, madds, madds_tolerance):
    model = DeepLabV3(aspp=aspp, **VOC)
    prof = keras_mnv2.profile(model)
    print(f"DeepLabV3 513 OS16 aspp={aspp}: {prof.params / 1e6:.3f}M params, "
          f"{prof.madds / 1e9:.3f}B MAdds")
    assert _within(prof.params, params, 0.05)
    assert _within(prof.madds, madds, madds_tolerance)
    head = set(head_layer_names(model))
    head_params = sum(row.params for row in prof.layers if row.name in head)
    assert head_params == _head_params(21, 320, aspp)
    # the backbone ends at block_16: MobileNetV2 without the 1280-wide Conv_1 and its BN
    backbone = keras_mnv2.MobileNetV2(alpha=1.0, input_shape=(513, 513, 3), include_top=False)
    assert prof.params - head_params == backbone.count_params() - (320 * 1280 + 4 * 1280)
    assert model.output.shape == (None, 513, 513, 21)
    assert model.output.dtype == "float32"


def test_flat_graph_on_the_320_channel_tap():
    model = DeepLabV3(**VOC)
    names = [layer.name for layer in model.layers]
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert "Conv_1" not in names and "out_relu" not in names
    assert model.get_layer("block_16_project_BN").output.shape == (None, 33, 33, 320)
    assert model.get_layer("aspp0").input.shape == (None, 33, 33, 320)
    assert model.get_layer("image_pooling_upsample").output.shape == (None, 33, 33, 256)
    assert model.get_layer("concat").output.shape == (None, 33, 33, 5 * 256)
    assert model.get_layer("logits").output.shape == (None, 33, 33, 21)
    # the official convention by default: bilinear with align_corners=True
    upsample = model.get_layer("logits_upsample")
    assert type(upsample).__name__ == "BilinearResize" and upsample.align_corners
    assert model.inputs[0] is model.layers[0].output
    # half-pixel: 513 is not a multiple of 33, so a Resizing layer does the bilinear upsampling
    half_pixel = DeepLabV3(alpha=0.35, align_corners=False, **VOC)
    assert type(half_pixel.get_layer("logits_upsample")).__name__ == "Resizing"


def _depthwise_rates(model):
    return {i: model.get_layer(f"block_{i}_depthwise").dilation_rate[0] for i in range(1, 17)}


def test_output_stride_16_dilation_and_atrous_rates():
    model = DeepLabV3(alpha=0.35, aspp=True, **VOC)
    rates = _depthwise_rates(model)
    assert [i for i, r in rates.items() if r == 2] == [14, 15, 16]
    assert all(r == 1 for i, r in rates.items() if i < 14)
    assert model.get_layer("block_13_depthwise").strides == (1, 1)
    assert model.get_layer("block_16_project_BN").output.shape[1:3] == (33, 33)
    assert [model.get_layer(f"aspp{i}").dilation_rate for i in (1, 2, 3)] == [
        (6, 6), (12, 12), (18, 18)]
    assert model.get_layer("aspp0").input.shape[-1] == backbone_channels(0.35) == 112


def test_output_stride_8_dilation_and_atrous_rates():
    model = DeepLabV3(alpha=0.35, output_stride=8, **VOC)
    rates = _depthwise_rates(model)
    assert [i for i, r in rates.items() if r == 2] == list(range(7, 14))
    assert [i for i, r in rates.items() if r == 4] == [14, 15, 16]
    assert model.get_layer("block_6_depthwise").strides == (1, 1)
    assert model.get_layer("block_16_project_BN").output.shape[1:3] == (65, 65)
    assert [model.get_layer(f"aspp{i}").dilation_rate[0] for i in (1, 2, 3)] == [12, 24, 36]
    assert model.output.shape == (None, 513, 513, 21)


def test_atrous_rates():
    assert deeplab_atrous_rates(16) == (6, 12, 18)
    assert deeplab_atrous_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        deeplab_atrous_rates(32)


def test_without_aspp_only_pooling_and_1x1_branches():
    model = DeepLabV3(aspp=False, alpha=0.35, num_classes=3, input_shape=(97, 97, 3))
    names = {layer.name for layer in model.layers}
    assert "aspp0" in names and "image_pooling" in names
    assert not names & {"aspp1", "aspp2", "aspp3"}
    assert model.get_layer("concat").output.shape == (None, 7, 7, 512)
    assert model.get_layer("concat_projection_dropout").rate == pytest.approx(0.1)


@pytest.mark.slow
def test_tflite_float_matches_keras(images):
    # 97 px (odd, like 513): a 7x7 feature map and a non-integer Resizing to 97x97
    model = DeepLabV3(input_shape=(97, 97, 3), **TINY)
    x = images(2, size=97)
    _calibrated(model, x)
    expected = model.predict(x, verbose=0)
    print("max |logit|", np.abs(expected).max())
    assert expected.shape == (2, 97, 97, 5)
    assert np.abs(expected).max() > 0.1  # real logits, not ~0
    np.testing.assert_allclose(tflite.run(export.convert(model, output="raw"), x), expected,
                               atol=1e-4)


@pytest.mark.parametrize("size", [96, 97])
def test_tf_keras_twin_matches_after_copy_weights(size, images):
    ours = _calibrated(DeepLabV3(input_shape=(size, size, 3), **TINY), images(2, size=size))
    twin = DeepLabV3(input_shape=(size, size, 3), framework="tf_keras", **TINY)
    assert [layer.name for layer in twin.layers] == [layer.name for layer in ours.layers]
    assert keras_mnv2.copy_weights(ours, twin) > 100
    x = images(2, size=size, seed=1)
    expected = ours.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(twin.predict(x, verbose=0), expected, atol=1e-5)
    # and back: a fresh Keras 3 model gets the twin's weights
    again = DeepLabV3(input_shape=(size, size, 3), **TINY)
    keras_mnv2.copy_weights(twin, again)
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)


def test_integer_factor_upsampling_is_the_same_bilinear_resize(images):
    # 96 px at OS16: 6x6 features, exactly x16, so UpSampling2D (supported by TFMOT) is used;
    # it must equal the half-pixel bilinear resize that Resizing does for other sizes.
    model = _calibrated(DeepLabV3(input_shape=(96, 96, 3), align_corners=False, **TINY),
                        images(2, size=96))
    assert type(model.get_layer("logits_upsample")).__name__ == "UpSampling2D"
    logits_model = keras.Model(model.inputs, [model.get_layer("logits").output, model.output])
    low, high = logits_model.predict(images(1, size=96), verbose=0)
    resized = keras.layers.Resizing(96, 96, interpolation="bilinear")(low)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(resized), high, atol=1e-6)
    assert np.abs(high - np.repeat(np.repeat(low, 16, 1), 16, 2)).max() > 1e-4  # not nearest


def test_keras_file_round_trip(tmp_path, images):
    model = _calibrated(DeepLabV3(input_shape=(97, 97, 3), **TINY), images(2, size=97))
    path = tmp_path / "deeplab.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = images(1, size=97, seed=2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    assert loaded.name == model.name == "deeplabv3_mobilenetv2_0.35_97_os16"


def test_backbone_weights_from_file(tmp_path):
    source = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(97, 97, 3), include_top=False)
    rng = np.random.RandomState(0)
    source.set_weights([w + rng.uniform(0, 0.1, w.shape) for w in source.get_weights()])
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = DeepLabV3(input_shape=(97, 97, 3), backbone_weights=str(path), **TINY)
    for name in ("Conv1", "block_8_depthwise", "block_16_project_BN"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_classes=0), "num_classes must be an integer >= 1"),
        (dict(num_classes=2.0), "num_classes must be an integer >= 1"),
        (dict(alpha=0), "alpha must be a number > 0"),
        (dict(output_stride=32), r"output_stride must be one of \(8, 16\)"),
        (dict(aspp="yes"), "aspp must be True or False"),
        (dict(dropout_rate=1.0), r"dropout_rate must be a number in \[0, 1\)"),
        (dict(input_shape=(None, None, 3)), "static input size"),
        (dict(input_shape=(513, 513)), r"input_shape must be \(height, width, channels\)"),
        (dict(input_shape=(16, 16, 3)), "at least 32 px"),
        (dict(framework="torch"), "framework must be one of"),
        (dict(backbone_weights=123), "weights must be None, 'imagenet' or a path"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        DeepLabV3(**kwargs)


def test_missing_backbone_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.weights.h5"):
        DeepLabV3(backbone_weights=str(tmp_path / "nothere.weights.h5"), alpha=0.35,
                  input_shape=(97, 97, 3))


def test_bilinear_resize_align_corners_matches_tf_and_the_ops_fallback():
    import tensorflow as tf

    from keras_mnv2.segmentation.deeplab import BilinearResize, bilinear_resize_ops

    x = np.random.RandomState(0).normal(size=(2, 7, 5, 3)).astype("float32")
    for align_corners in (True, False):
        layer = BilinearResize(13, 9, align_corners=align_corners)
        got = keras.ops.convert_to_numpy(layer(x))
        expected = tf.compat.v1.image.resize_bilinear(
            x, (13, 9), align_corners=align_corners, half_pixel_centers=not align_corners).numpy()
        # off TensorFlow the layer is the keras.ops path below (float32 blends: within 1e-5)
        np.testing.assert_allclose(
            got, expected, atol=1e-6 if keras.backend.backend() == "tensorflow" else 1e-5)
        # the keras.ops path (used off TensorFlow) computes the same resize
        fallback = keras.ops.convert_to_numpy(bilinear_resize_ops(keras.ops, x, (13, 9),
                                                                  align_corners))
        np.testing.assert_allclose(fallback, expected, atol=1e-5)
    # align_corners: corners land on corners, 7 -> 13 puts every input row on an even output row
    got = keras.ops.convert_to_numpy(BilinearResize(13, 9)(x))
    np.testing.assert_allclose(got[:, ::2, ::2], x, atol=1e-6)
    half = keras.ops.convert_to_numpy(BilinearResize(13, 9, align_corners=False)(x))
    assert np.abs(got - half).max() > 0.05  # the two conventions differ


@pytest.mark.slow
def test_align_corners_converts_to_one_tflite_resize_with_the_flag(images):
    from tensorflow.lite.tools import flatbuffer_utils

    model = _calibrated(DeepLabV3(input_shape=(97, 97, 3), **TINY), images(2, size=97))
    content = export.convert(model, output="raw")
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    flags = [(op.builtinOptions.alignCorners, op.builtinOptions.halfPixelCenters)
             for op in parsed.subgraphs[0].operators
             if hasattr(op.builtinOptions, "alignCorners")]
    assert flags == [(True, False)]  # the logits upsampling, one RESIZE_BILINEAR op
    x = images(2, size=97, seed=3)
    np.testing.assert_allclose(tflite.run(content, x), model.predict(x, verbose=0), atol=1e-4)


def test_keras_file_round_trip_keeps_align_corners(tmp_path, images):
    model = _calibrated(DeepLabV3(input_shape=(65, 65, 3), **TINY), images(2, size=65))
    path = tmp_path / "deeplab.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("logits_upsample").align_corners is True
    x = images(1, size=65, seed=2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_deeplab_channel_rounding_of_the_official_dm05_model():
    # DeepLab builds MobileNetV2 with divisible_by=1, min_depth=1 when the multiplier is not 1
    model = DeepLabV3(alpha=0.5, divisible_by=1, min_depth=1, **VOC)
    projects = [model.get_layer("expanded_conv_project").filters] + [
        model.get_layer(f"block_{i}_project").filters for i in range(1, 17)]
    assert model.get_layer("Conv1").filters == 16
    assert projects == [8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
    assert model.get_layer("block_2_expand").filters == 72  # 12 * 6, rounded to 8 as slim does
    assert model.get_layer("aspp0").input.shape[-1] == backbone_channels(0.5, 1, 1) == 160
    default = DeepLabV3(alpha=0.5, **VOC)
    assert default.get_layer("block_2_project").filters == 16  # keras.applications rounding
    assert default.get_layer("block_2_expand").filters == 96
    with pytest.raises(ValueError, match="divisible_by must be an integer >= 1"):
        DeepLabV3(alpha=0.5, divisible_by=0, **VOC)
    with pytest.raises(ValueError, match="align_corners must be True or False"):
        DeepLabV3(alpha=0.5, align_corners="yes", **VOC)
