"""The tf_keras twin (for TFMOT) comes from the same builder code as the Keras 3 model."""

import keras
import numpy as np
import pytest
import tf_keras

import keras_mnv2
from keras_mnv2.frameworks import framework_of, get_keras


def _layer_summary(model):
    return [
        (layer.name, [tuple(w.shape) for w in layer.weights])
        for layer in model.layers
        if type(layer).__name__ != "InputLayer"
    ]


@pytest.mark.parametrize("alpha,include_top", [(0.35, True), (0.75, False)])
def test_tf_keras_twin_has_same_layers_weights_and_outputs(alpha, include_top, images):
    ours = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=include_top)
    rng = np.random.RandomState(3)
    ours.set_weights([w + rng.uniform(0, 0.1, w.shape) for w in ours.get_weights()])
    twin = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=include_top,
                                  framework="tf_keras")
    assert isinstance(twin, tf_keras.Model)
    assert framework_of(twin) == "tf_keras" and framework_of(ours) == "keras"
    assert _layer_summary(twin) == _layer_summary(ours)
    assert twin.count_params() == ours.count_params()
    keras_mnv2.copy_weights(ours, twin)
    x = images()
    # the same kernels as TF's on the TF backend; JAX's and torch's convolutions differ by ~3e-5
    atol = 1e-5 if keras.backend.backend() == "tensorflow" else 5e-5
    np.testing.assert_allclose(twin.predict(x, verbose=0), ours.predict(x, verbose=0), atol=atol)


def test_tf_keras_twin_with_output_stride_profiles_the_same():
    ours = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                  output_stride=8)
    twin = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                  output_stride=8, framework="tf_keras")
    assert keras_mnv2.profile(twin).madds == keras_mnv2.profile(ours).madds
    assert twin.get_layer("block_15_depthwise").dilation_rate == (4, 4)


def test_copy_weights_names_the_mismatch():
    small = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=3)
    other = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=4)
    with pytest.raises(ValueError, match="layer 'predictions': weight shapes differ"):
        keras_mnv2.copy_weights(small, other)
    headless = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False)
    with pytest.raises(ValueError, match="layer 'predictions' .* is not in"):
        keras_mnv2.copy_weights(small, headless)
    assert keras_mnv2.copy_weights(small, headless, skip_missing=True) == 104


def test_unknown_framework():
    with pytest.raises(ValueError, match="framework must be one of"):
        get_keras("jax")
    with pytest.raises(TypeError, match="expected a keras or tf_keras Model"):
        framework_of(object())
