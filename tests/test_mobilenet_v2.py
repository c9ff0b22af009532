import keras
import numpy as np
import pytest

import keras_mnv2
from keras_mnv2.mobilenet_v2 import block_plan, imagenet_weights_filename

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def _weighted_names(model):
    return [layer.name for layer in model.layers if layer.weights]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_parameter_count_equals_keras_applications(alpha):
    ours = keras_mnv2.MobileNetV2(alpha=alpha)
    reference = keras.applications.MobileNetV2(alpha=alpha, weights=None)
    assert ours.count_params() == reference.count_params()
    assert _weighted_names(ours) == _weighted_names(reference)
    assert [w.shape for w in ours.weights] == [w.shape for w in reference.weights]


def test_known_parameter_count_at_alpha_1():
    assert keras_mnv2.MobileNetV2().count_params() == 3_538_984


def test_last_conv_stays_1280_for_small_alpha_and_grows_above_1():
    assert keras_mnv2.MobileNetV2(alpha=0.5).get_layer("Conv_1").filters == 1280
    assert keras_mnv2.MobileNetV2(alpha=1.4).get_layer("Conv_1").filters == 1792


def test_residuals_only_where_stride_1_and_channels_match():
    model = keras_mnv2.MobileNetV2(alpha=1.0, include_top=False, input_shape=(96, 96, 3))
    adds = sorted(int(l.name.split("_")[1]) for l in model.layers if l.name.endswith("_add"))
    assert adds == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]


@pytest.mark.parametrize("alpha,include_top", [(0.35, True), (0.5, False), (1.0, True), (1.3, False)])
def test_outputs_match_keras_applications_after_weight_copy(alpha, include_top, images, tmp_path):
    reference = keras.applications.MobileNetV2(
        alpha=alpha, input_shape=(96, 96, 3), include_top=include_top, weights=None
    )
    # Non-trivial batch-norm statistics, so that a misplaced weight shows up.
    rng = np.random.RandomState(1)
    reference.set_weights([w + rng.uniform(0, 0.1, w.shape) for w in reference.get_weights()])
    ours = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=include_top)
    assert keras_mnv2.copy_weights(reference, ours) == len(_weighted_names(reference))
    x = images()
    expected = reference.predict(x, verbose=0)
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, atol=1e-5)

    path = tmp_path / "reference.weights.h5"
    reference.save_weights(path)
    from_file = keras_mnv2.MobileNetV2(
        alpha=alpha, input_shape=(96, 96, 3), include_top=include_top, weights=str(path)
    )
    np.testing.assert_allclose(from_file.predict(x, verbose=0), expected, atol=1e-5)


def test_official_imagenet_file_loads_from_keras_cache(offline_keras_home, images):
    """The official files are legacy .h5 files written by Keras 2; tf_keras writes the same format."""
    import tf_keras

    legacy = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)
    rng = np.random.RandomState(2)
    legacy.set_weights([w + rng.uniform(0, 0.1, w.shape) for w in legacy.get_weights()])
    name = imagenet_weights_filename(0.35, 96, include_top=True)
    assert name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    legacy.save_weights(str(offline_keras_home / "models" / name))

    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights="imagenet")
    x = images()
    # the same kernels as TF's on the TF backend; JAX's and torch's convolutions differ by ~2e-5
    atol = 1e-5 if keras.backend.backend() == "tensorflow" else 5e-5
    np.testing.assert_allclose(model.predict(x, verbose=0), legacy.predict(x, verbose=0), atol=atol)
    # split-expansion form: the file loads into the whole-block model, then is sliced by name
    split = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights="imagenet",
                                   expansion_splits=3)
    assert "block_1_expand_s2" in [layer.name for layer in split.layers]
    np.testing.assert_allclose(split.predict(x, verbose=0), legacy.predict(x, verbose=0),
                               atol=atol)


def test_imagenet_weights_offline_error_says_which_file_where(offline_keras_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(FileNotFoundError) as err:
        keras_mnv2.MobileNetV2(alpha=0.5, input_shape=(128, 128, 3), weights="imagenet",
                               include_top=False)
    message = str(err.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_128_no_top.h5" in message
    assert str(offline_keras_home / "models") in message


def test_keras_file_round_trip(tmp_path, images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=7)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    x = images()
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, atol=1e-6)
    # and as a weights source for a fresh build
    rebuilt = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=7,
                                     weights=str(path))
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), expected, atol=1e-6)


def test_variable_input_size_without_top():
    model = keras_mnv2.MobileNetV2(alpha=0.35, include_top=False)
    assert model.input_shape == (None, None, None, 3)
    assert model.predict(np.zeros((1, 64, 96, 3)), verbose=0).shape == (1, 2, 3, 1280)


def test_pooling_and_top_shapes():
    avg = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                 pooling="avg")
    assert avg.output_shape == (None, 1280)
    top = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=5,
                                 classifier_activation=None)
    assert top.output_shape == (None, 5)
    assert "dropout" not in [layer.name for layer in top.layers]  # as keras.applications
    with_dropout = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=5,
                                          dropout_rate=0.2)
    assert with_dropout.get_layer("dropout").rate == 0.2
    assert top.name == "mobilenetv2_0.35_96"


def test_input_tensor():
    tensor = keras.Input((64, 64, 3))
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_tensor=tensor, include_top=False)
    assert model.output_shape == (None, 2, 2, 1280)


@pytest.mark.parametrize(
    "output_stride,sizes",
    [(None, (6, 3)), (32, (6, 3)), (16, (6, 6)), (8, (12, 12))],
)
def test_output_stride_feature_shapes(output_stride, sizes):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                   output_stride=output_stride)
    taps = keras_mnv2.feature_extractor(model)
    shapes = {name: tuple(t.shape[1:]) for name, t in taps.output.items()}
    assert shapes["block_13_expand_relu"] == (sizes[0], sizes[0], 192)
    assert shapes["out_relu"] == (sizes[1], sizes[1], 1280)
    # the taps share the backbone's layers: no rebuild
    assert taps.get_layer("Conv1") is model.get_layer("Conv1")


def test_output_stride_rates_follow_tf_slim_rule():
    rates = {16: {}, 8: {}}
    for os_ in rates:
        model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                       output_stride=os_)
        for i in range(1, 17):
            layer = model.get_layer(f"block_{i}_depthwise")
            rates[os_][i] = (layer.strides[0], layer.dilation_rate[0])
    assert rates[16][13] == (1, 1)
    assert all(rates[16][i] == (1, 2) for i in (14, 15, 16))
    assert rates[8][6] == (1, 1)
    assert all(rates[8][i] == (1, 2) for i in range(7, 14))
    assert all(rates[8][i] == (1, 4) for i in (14, 15, 16))
    # OS16 keeps the first stride-2 blocks unchanged
    assert [p[3] for p in block_plan(16)][:14] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1]


def test_output_stride_8_and_16_feature_maps_are_atrous_equivalents():
    """At OS16 the stride-16 tap equals the plain network's (same weights, same layers before)."""
    plain = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False)
    atrous = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                    output_stride=16)
    keras_mnv2.copy_weights(plain, atrous)
    x = np.random.RandomState(0).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    a = keras_mnv2.feature_extractor(plain, ["block_12_add"]).predict(x, verbose=0)
    b = keras_mnv2.feature_extractor(atrous, ["block_12_add"]).predict(x, verbose=0)
    np.testing.assert_allclose(a["block_12_add"], b["block_12_add"], atol=1e-5)


def test_feature_extractor_unknown_layer():
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False)
    with pytest.raises(ValueError, match="no layer named 'block_99'"):
        keras_mnv2.feature_extractor(model, ["block_99"])


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(alpha=0), "alpha must be a number > 0"),
        (dict(alpha=-1.0), "alpha must be a number > 0"),
        (dict(alpha="wide"), "alpha must be a number > 0"),
        (dict(input_shape=(31, 96, 3)), "at least 32 px"),
        (dict(input_shape=(96, 96)), r"\(height, width, channels\)"),
        (dict(weights="imagenet", input_shape=(96, 96, 1), include_top=False), "3-channel"),
        (dict(weights="imagenet", input_shape=(96, 96, 3), classes=10), "classes=1000"),
        (dict(weights="imagenet", input_shape=(100, 100, 3)), "side in"),
        (dict(weights="imagenet", alpha=0.6), "alpha in"),
        (dict(include_top=False, pooling="mean"), "pooling must be one of"),
        (dict(output_stride=4), r"output_stride must be one of \(8, 16, 32, None\)"),
        (dict(classes=0), "classes must be an integer >= 1"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(framework="torch"), "framework must be one of"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        keras_mnv2.MobileNetV2(**kwargs)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="weights file not found: /no/such.weights.h5"):
        keras_mnv2.MobileNetV2(weights="/no/such.weights.h5")


def test_wrong_weights_extension(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"0")
    with pytest.raises(ValueError, match=r"\.weights\.h5, \.h5 or \.keras"):
        keras_mnv2.MobileNetV2(weights=str(path))


def test_split_model_from_a_whole_block_keras_file(tmp_path, images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=4,
                                   bn_momentum=0.0)
    x = images(4, size=64)
    model(x, training=True)  # batch-norm statistics of real activations
    path = str(tmp_path / "whole.keras")
    model.save(path)
    split = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=4,
                                   bn_momentum=0.0, weights=path, expansion_splits=(2,) * 17)
    assert "block_5_project_s1" in [layer.name for layer in split.layers]
    # The split blocks add their partial sums in another order: up to 1.1e-5 measured.
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5", ".keras"])
def test_garbage_weights_file_is_named(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a weights file" * 10)
    with pytest.raises(ValueError, match=f"weights file .*garbage{suffix} is not an? "):
        keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), weights=str(path),
                               classes=3)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(alpha=float("nan")), r"alpha must be a number > 0 \(and finite\), got nan"),
        (dict(alpha=float("inf")), r"alpha must be a number > 0 \(and finite\), got inf"),
        (dict(input_shape=(96, 96, 0)), "channels must be positive integers"),
        (dict(input_shape=("96", 96, 3)), "height and width must be positive integers"),
        (dict(input_shape=(96.0, 96, 3)), "height and width must be positive integers"),
        (dict(input_shape=(3, 224, 224)), r"looks channels-first.*\(224, 224, 3\)"),
        (dict(input_shape=(3, None, None), include_top=False), "looks channels-first"),
        (dict(dropout_rate=None), r"dropout_rate must be a number in \[0, 1\), got None"),
        (dict(bn_momentum=5), r"bn_momentum must be a number in \[0, 1\], got 5"),
        (dict(expansion_splits=1000), "each at most 64, got 1000"),
        (dict(include_top="yes"), "include_top must be True or False"),
    ],
)
def test_bad_builder_arguments_get_one_clear_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        keras_mnv2.MobileNetV2(**{"alpha": 0.35, **kwargs})


def test_numpy_scalars_are_accepted(images):
    model = keras_mnv2.MobileNetV2(alpha=np.float32(0.35), input_shape=(np.int64(64), 64, 3),
                                   classes=np.int64(3), dropout_rate=np.float64(0.1),
                                   bn_momentum=np.float32(0.9), expansion_splits=np.int64(2))
    assert model.name == "mobilenetv2_0.35_64" and model.output_shape == (None, 3)
    detector = keras_mnv2.SSDLite(np.int64(3), alpha=np.float32(0.35), input_size=np.int64(96))
    assert detector.anchors.shape[0] == detector.output["boxes"].shape[1]


def test_channels_first_setting_is_refused(monkeypatch):
    monkeypatch.setattr(keras.backend, "image_data_format", lambda: "channels_first")
    with pytest.raises(ValueError, match="builds channels-last models.*'channels_first'"):
        keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3))


@pytest.mark.parametrize("alpha", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_default_channel_rounding_is_unchanged_and_slim_rounding_is_optional(alpha):
    from keras_mnv2.blocks import make_divisible
    from keras_mnv2.mobilenet_v2 import BLOCK_SPECS

    model = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=False)
    paper = [c for _, c, n, _ in BLOCK_SPECS for _ in range(n)]
    projects = [model.get_layer("expanded_conv_project").filters] + [
        model.get_layer(f"block_{i}_project").filters for i in range(1, 17)]
    assert projects == [make_divisible(int(c * alpha)) for c in paper]
    slim = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=False,
                                  divisible_by=1, min_depth=1)
    slim_projects = [slim.get_layer("expanded_conv_project").filters] + [
        slim.get_layer(f"block_{i}_project").filters for i in range(1, 17)]
    assert slim_projects == [make_divisible(c * alpha, 1, 1) for c in paper]
    for i in range(1, 17):  # expansions rounded to 8 (slim's expand_input_by_factor)
        width = slim.get_layer(f"block_{i}_expand").filters
        assert width % 8 == 0 and abs(width - 6 * slim_projects[i - 1]) < 8
