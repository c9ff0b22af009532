"""keras.applications' own MobileNetV2 test cases (keras/src/applications/applications_test.py and
the argument checks of keras/src/applications/mobilenet_v2.py), run against keras_mnv2.MobileNetV2
with keras.applications as the control: the same arguments build the same shapes, and the
arguments keras.applications refuses are refused here too.

Left out on purpose: the channels-first cases (keras_mnv2 builds channels-last models only and
says so, see test_mobilenet_v2.test_channels_first_setting_is_refused) and the pretrained
"African elephant" case (it downloads the official file; test_mobilenet_v2 loads a file of the
same format from the Keras cache).
"""

import re

import keras
import numpy as np
import pytest

import keras_mnv2

REFERENCE = keras.applications.MobileNetV2


def _layer_list(model):
    """(class, name, weight shapes) per layer, the input and the auto-numbered suffix of Keras'
    default pooling names left out."""
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        name = re.sub(r"_\d+$", "", layer.name) if kind.startswith("Global") else layer.name
        rows.append((kind, name, [tuple(w.shape) for w in layer.weights]))
    return rows


def _both(**kwargs):
    return REFERENCE(**kwargs), keras_mnv2.MobileNetV2(**kwargs)


def test_default_layer_list_equals_keras_applications():
    reference, ours = _both(weights=None)
    assert _layer_list(ours) == _layer_list(reference)  # no Dropout before "predictions"
    assert ours.name == reference.name == "mobilenetv2_1.00_224"
    assert ours.input_shape == reference.input_shape == (None, 224, 224, 3)
    assert ours.layers[-1].activation.__name__ == "softmax"  # test_application_classifier_activation


@pytest.mark.parametrize("channels", [1, 4])
def test_notop_variable_input_channels(channels):
    for model in _both(weights=None, include_top=False, input_shape=(None, None, channels),
                       alpha=0.35):
        assert list(model.outputs[0].shape) == [None, None, None, 1280]


def test_notop_custom_input_shape_and_pooling():
    for model in _both(weights=None, include_top=False, input_shape=(123, 123, 3), alpha=0.35):
        assert model.outputs[0].shape[-1] == 1280
    for model in _both(weights=None, include_top=False, pooling="max", alpha=0.35):
        assert list(model.outputs[0].shape) == [None, 1280]


def test_notop_custom_input_tensor():
    shapes = []
    for app in (REFERENCE, keras_mnv2.MobileNetV2):
        inputs = keras.Input(shape=(200, 200, 4), name="custom_input")
        x = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs)
        model = app(weights=None, include_top=False, input_tensor=x, alpha=0.35)
        shapes.append(list(model.outputs[0].shape))
        assert model.inputs[0].shape[1:] == (200, 200, 4)
    assert shapes[0] == shapes[1] == [None, 4, 4, 1280]


def _dummy_file(tmp_path):
    path = tmp_path / "pretrained.weights.h5"
    path.write_bytes(b"\0")
    return str(path)


# Each case: keras.applications raises ValueError, keras_mnv2 raises ValueError with the pattern.
ERROR_CASES = {
    "top_with_free_size": (dict(weights=None, include_top=True, input_shape=(None, None, 3)),
                           "include_top=True needs a static input_shape"),
    "tensor_conflicts_with_shape": (dict(weights=None, input_tensor="tensor",
                                         input_shape=(160, 160, 3), include_top=False),
                                    "conflicts with input_shape"),
    "activation_with_weights": (dict(weights="file", classifier_activation="relu"),
                                "classifier_activation must be 'softmax' or None"),
    "imagenet_classes": (dict(weights="imagenet", classes=10), "classes=1000"),
    "imagenet_alpha": (dict(weights="imagenet", alpha=0.6), "alpha in"),
    "imagenet_channels": (dict(weights="imagenet", include_top=False, input_shape=(96, 96, 1)),
                          "3-channel"),
    "imagenet_top_size": (dict(weights="imagenet", input_shape=(100, 100, 3)), "side in"),
    "too_small": (dict(weights=None, input_shape=(16, 16, 3), include_top=False),
                  "at least 32 px"),
    "two_dims": (dict(weights=None, input_shape=(96, 96), include_top=False),
                 r"\(height, width, channels\)"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_refused_where_keras_applications_refuses(case, tmp_path, offline_keras_home):
    kwargs, pattern = ERROR_CASES[case]
    kwargs = dict(kwargs)
    if kwargs.get("input_tensor") == "tensor":
        kwargs["input_tensor"] = keras.Input((224, 224, 3))
    if kwargs.get("weights") == "file":
        kwargs["weights"] = _dummy_file(tmp_path)
    with pytest.raises(ValueError):
        REFERENCE(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        keras_mnv2.MobileNetV2(**kwargs)


def test_activation_with_pretrained_weights_as_keras_applications(tmp_path):
    """Both allow softmax and None with pretrained weights (and anything without them)."""
    reference = REFERENCE(weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=3,
                          classifier_activation="sigmoid")
    path = str(tmp_path / "w.weights.h5")
    reference.save_weights(path)
    for activation in (None, "softmax"):
        model = keras_mnv2.MobileNetV2(weights=path, alpha=0.35, input_shape=(96, 96, 3),
                                       classes=3, classifier_activation=activation)
        np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0],
                                      reference.get_layer("predictions").get_weights()[0])
    ours = keras_mnv2.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3), classes=3,
                                  classifier_activation="sigmoid")
    assert ours.layers[-1].activation.__name__ == "sigmoid"
