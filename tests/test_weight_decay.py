"""The one weight-decay rule (pipelines/jobs/weight_decay.py) as each job applies it."""

import dataclasses

import keras
import numpy as np
import pytest

from pipelines.jobs import classification, detection, segmentation
from pipelines.jobs.weight_decay import add_weight_decay, decayed_variables

WD = 4e-5


def _build(name, weight_decay):
    if name == "detection":
        recipe = dataclasses.replace(detection.PAPER, alpha=0.35, input_size=96,
                                     weight_decay=weight_decay)
        return detection.build_model(recipe, num_classes=3)
    recipe = dataclasses.replace(segmentation.PAPER, alpha=0.35, crop_size=64,
                                 weight_decay=weight_decay)
    return segmentation.build_model(recipe, num_classes=3, size=64)


# The backbone's Conv1 and 1x1 convs, and SSDLite's extra layers and heads or DeepLab's head.
# The classifier's rule is tested in test_classification.py::test_model_weight_decay_as_tf_slim.
@pytest.mark.parametrize("name,count", [("detection", 55), ("segmentation", 41)])
def test_decay_is_on_conv_and_dense_kernels_only(name, count):
    model = _build(name, WD)
    kernels = {f"{layer.name}/kernel" for layer in model.layers
               if type(layer).__name__ in ("Conv2D", "Dense")}
    decayed = decayed_variables(model)
    assert {v.path for v in decayed} == kernels and len(kernels) == count
    # never a depthwise kernel (also named "kernel"), a bias or batch-norm gamma/beta
    depthwise = {f"{layer.name}/kernel" for layer in model.layers
                 if isinstance(layer, keras.layers.DepthwiseConv2D)}
    assert depthwise and not depthwise & {v.path for v in decayed}
    expected = sum(WD * float(np.sum(keras.ops.convert_to_numpy(v) ** 2)) / 2 for v in decayed)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_optimizers_carry_no_decay_and_bad_values_are_named():
    for job in (classification, detection, segmentation):
        assert job.make_optimizer(job.PAPER, 10).weight_decay is None
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert add_weight_decay(model, 0.0) is model and not model.losses
    with pytest.raises(ValueError, match="weight_decay"):
        add_weight_decay(model, -1.0)


def test_fit_applies_the_decay():
    # a perfect fit (zero data-loss gradient): one SGD step moves the kernel by -lr * wd * w
    model = keras.Sequential([keras.Input((2,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    add_weight_decay(model, 0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = np.array([[1.0, 2.0]], "float32")
    model.fit(x, x.sum(1, keepdims=True), epochs=1, verbose=0)
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), 1 - 0.5 * 0.1, rtol=1e-6)
