import numpy as np
import pytest

import keras_mnv2
from keras_mnv2.detection.ssdlite import SSDLite, feature_map_sizes, head_layer_names, ssdlite_anchors


def _within(value, target, tolerance):
    return abs(value - target) <= tolerance * target


def test_size_parity_with_paper_tables_5_and_6():
    model = SSDLite(80, alpha=1.0, input_size=320)
    prof = keras_mnv2.profile(model)
    head = set(head_layer_names(model))
    head_params = sum(row.params for row in prof.layers if row.name in head)
    print(f"SSDLite 320: {prof.params / 1e6:.2f}M params, {prof.madds / 1e9:.3f}B MAdds, "
          f"head {head_params / 1e6:.2f}M params")
    assert _within(prof.params, 4.3e6, 0.05)  # Table 6
    assert _within(prof.madds, 0.8e9, 0.05)  # Table 6
    assert _within(head_params, 2.1e6, 0.05)  # Table 5
    backbone = keras_mnv2.MobileNetV2(alpha=1.0, input_shape=(320, 320, 3), include_top=False)
    assert prof.params - head_params == backbone.count_params()


def test_outputs_and_anchors_line_up():
    model = SSDLite(3, alpha=0.35, input_size=96)
    sizes = feature_map_sizes(96)
    assert sizes == [6, 3, 2, 1, 1, 1]
    expected = 6 * 6 * 3 + sum(s * s * 6 for s in sizes[1:])
    assert model.anchors.shape == (expected, 4)
    assert model.output["boxes"].shape[1:] == (expected, 4)
    assert model.output["classes"].shape[1:] == (expected, 4)
    np.testing.assert_array_equal(model.anchors, ssdlite_anchors(96))
    assert feature_map_sizes(320) == [20, 10, 5, 3, 2, 1]
    assert ssdlite_anchors(320).shape == (2034, 4)


def test_backbone_taps_and_separable_predictors():
    model = SSDLite(3, alpha=0.35, input_size=96)
    assert model.get_layer("extra_1_reduce").input.shape[1:3] == (3, 3)  # from out_relu
    assert model.get_layer("box_predictor_0_depthwise").input.shape[-1] == 192  # block_13 expand
    for i in range(6):
        assert type(model.get_layer(f"class_predictor_{i}_depthwise")).__name__ == "DepthwiseConv2D"
        assert model.get_layer(f"class_predictor_{i}").kernel_size == (1, 1)
    assert model.get_layer("extra_1_project").filters == max(int(512 * 0.35), 16)


def test_background_prior_initialises_class_bias():
    model = SSDLite(4, alpha=0.35, input_size=96, background_prior=0.99)
    logits = model.predict(np.zeros((1, 96, 96, 3), "float32"), verbose=0)["classes"]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    # the depthwise/BN path adds little at initialisation; the bias dominates
    assert np.median(probs[0, :, 0]) == pytest.approx(0.99, abs=0.02)


def test_tf_keras_twin_matches(images):
    ours = SSDLite(3, alpha=0.35, input_size=96)
    twin = SSDLite(3, alpha=0.35, input_size=96, framework="tf_keras")
    keras_mnv2.copy_weights(ours, twin)
    x = images()
    a, b = ours.predict(x, verbose=0), twin.predict(x, verbose=0)
    for key in ("boxes", "classes"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(num_classes=0), "num_classes must be an integer >= 1"),
        (dict(num_classes=3, input_size=32), "input_size must be an integer >= 64"),
        (dict(num_classes=3, extra_depths=(64, 32)), "extra_depths must have 4 entries"),
        (dict(num_classes=3, background_prior=1.0), "background_prior"),
        (dict(num_classes=3, alpha=0), "alpha must be a number > 0"),
    ],
)
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SSDLite(**kwargs)


def test_bn_momentum_reaches_backbone_and_head():
    model = SSDLite(3, alpha=0.35, input_size=96, bn_momentum=0.9)
    assert model.get_layer("bn_Conv1").momentum == 0.9
    assert model.get_layer("block_5_project_BN").momentum == 0.9
    assert model.get_layer("class_predictor_2_depthwise_BN").momentum == 0.9
    assert keras_mnv2.MobileNetV2(alpha=0.35).get_layer("bn_Conv1").momentum == 0.999


def test_detector_gives_the_evaluation_path_detections(tmp_path):
    """The inference form (decoding and NMS in the graph) against decode_detections on the raw
    outputs, directly and after a .keras round trip of the detector."""
    import keras

    from keras_mnv2.detection import detector
    from keras_mnv2.detection.postprocess import decode_detections
    from test_export import pattern_images, spread_ssdlite

    model = spread_ssdlite()
    inference = detector(model, score_threshold=0.3, max_detections=20)
    x, _ = pattern_images(per_class=1)
    got = inference.predict(x, verbose=0)
    raw = model.predict(x, verbose=0)
    expected = decode_detections(raw["boxes"], raw["classes"], model.anchors,
                                 score_threshold=0.3, max_detections=20)
    assert set(got) == {"boxes", "classes", "scores", "num_detections"}
    assert got["boxes"].shape == (4, 20, 4) and got["classes"].dtype == np.int32
    print("detections per image", got["num_detections"])
    assert got["num_detections"].min() > 0 and got["scores"][:, 0].min() > 0.3
    for key in expected:
        np.testing.assert_allclose(got[key], np.asarray(expected[key]), atol=1e-5, err_msg=key)

    path = str(tmp_path / "detector.keras")
    inference.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.get_layer("detections").anchors.numpy(), model.anchors)
    again = reloaded.predict(x, verbose=0)
    for key in expected:
        np.testing.assert_allclose(again[key], got[key], atol=1e-6, err_msg=key)

    with pytest.raises(ValueError, match="not an SSDLite"):
        detector(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=3))
    with pytest.raises(ValueError, match="iou_threshold must be a number in"):
        detector(model, iou_threshold=2)


@pytest.mark.slow
def test_detector_export_serves_detections(tmp_path):
    import tensorflow as tf

    from keras_mnv2.detection import detector
    from test_export import pattern_images, spread_ssdlite

    inference = detector(spread_ssdlite(), score_threshold=0.3, max_detections=10)
    x, _ = pattern_images(per_class=1)
    expected = inference.predict(x, verbose=0)
    inference.export(str(tmp_path / "served"), verbose=False)
    archive = tf.saved_model.load(str(tmp_path / "served"))  # kept: it owns the variables
    served = archive.serve(tf.constant(x))
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(served[key]), value, atol=1e-5, err_msg=key)
