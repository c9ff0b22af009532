import numpy as np

import keras_mnv2
from keras_mnv2 import tflite


def test_float_tflite_agrees_with_keras(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=10,
                                   classifier_activation=None)
    rng = np.random.RandomState(4)
    # non-trivial batch-norm statistics (1-D weights); kernels keep their initialisation
    model.set_weights([w + rng.uniform(0, 0.1, w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    content = tflite.convert_float(model)
    x = images(3)
    expected = model.predict(x, verbose=0)
    print("max |logit|", np.abs(expected).max())
    assert np.abs(expected).max() > 1e-2  # logits, not a constant
    np.testing.assert_allclose(tflite.run(content, x), expected, atol=1e-4)


def test_output_stride_16_backbone_converts(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                   output_stride=16)
    x = images(1)
    out = tflite.run(tflite.convert_float(model), x)
    assert out.shape == (1, 6, 6, 1280)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-4)
