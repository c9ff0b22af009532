"""The detection and segmentation jobs under MirroredStrategy over two logical CPU devices match
their single-device run: the same global batch of 4, the same initial weights, 3 steps.

The model, optimizer, loss and input distribution are the jobs' own (``build_model``,
``make_optimizer`` of the PAPER recipes, the compiled loss, ``training.distribute`` with
``training.per_replica_batch``), on a tiny configuration (alpha 0.35, 64 px). Batch norm is
frozen (inference mode): per-replica batch norm normalizes each replica's 2 images with their
own statistics, a different computation, and synchronized batch norm over ~60 layers takes
minutes to trace on 2 cores (the ImageNet test, tests/test_distributed.py, covers it).

Both losses divide by a count of the batch (positive anchors; labelled pixels), and under a
strategy each replica divides by its own count (the replicas' mean of their normalized losses).
The data make the counts equal on both replicas (every image has the same boxes; no pixel is
ignored), so that the two runs are the same computation and differ only by float32 summation
order across replicas (and the order of the two halves' reductions). That is rounding, about
1e-7 relative per operation, grown over 3 steps of a few dozen layers: the tolerances below
(1e-4 relative on the loss, 1e-4 absolute on weights of order 0.1-1) sit far above it and far
below a real difference (a loss not divided by the replicas doubles it).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import dataclasses, json, sys
import numpy as np
sys.path.insert(0, {repo!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from pipelines.jobs import detection, segmentation, training

STEPS, BATCH = 3, 4
rng = np.random.RandomState(0)
images = rng.uniform(-1, 1, (STEPS * BATCH, 64, 64, 3)).astype("float32")

if {job!r} == "detection":
    from keras_mnv2.detection.losses import ssd_losses
    from keras_mnv2.detection.matching import encode_targets

    recipe = dataclasses.replace(detection.PAPER, alpha=0.35, input_size=64, batch_size=BATCH,
                                 epochs=2, warmup_epochs=0.0)
    build = lambda: detection.build_model(recipe, 2)
    anchors = build().anchors
    boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.4, 0.3, 0.9, 0.9]], "float32")
    box_targets, classes = (np.asarray(t) for t in encode_targets(
        boxes, np.array([1, 2], "int32"), anchors))
    one = {{"boxes": np.concatenate([box_targets, classes[:, None].astype("float32")], -1),
           "classes": classes}}
    targets = {{k: np.repeat(v[None], STEPS * BATCH, axis=0) for k, v in one.items()}}
    compile_args = lambda: {{"loss": ssd_losses(mode=recipe.class_loss)}}
    make_optimizer = detection.make_optimizer
else:
    from keras_mnv2.segmentation import MeanIoU, SegmentationLoss

    recipe = dataclasses.replace(segmentation.PAPER, alpha=0.35, crop_size=64, eval_size=64,
                                 output_stride=8, aspp=False, batch_size=BATCH, epochs=2)
    build = lambda: segmentation.build_model(recipe, 3, recipe.crop_size)
    targets = np.zeros((STEPS * BATCH, 64, 64), "int32")
    targets[:, 8:40, 8:40] = 1
    targets[:, 40:, 30:] = 2
    images[..., 0] += targets * 0.5
    compile_args = lambda: {{"loss": SegmentationLoss(), "metrics": [MeanIoU(3)]}}
    make_optimizer = segmentation.make_optimizer


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["loss"]))


def dataset_fn(ctx):
    # one input pipeline: its per-replica batches go to the replicas in turn, so replica i of
    # step k gets images 4k + 2i, 4k + 2i + 1: step k's global batch is the single-device one
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    return ds.batch(training.per_replica_batch(BATCH, ctx)).repeat()


def train(strategy, initial):
    with strategy.scope():
        model = build()
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model.set_weights(initial)
        model.compile(optimizer=make_optimizer(recipe, 100), **compile_args())
        model.optimizer.build(model.trainable_variables)
    losses = Losses()
    data = (training.distribute(strategy, dataset_fn)
            if strategy.num_replicas_in_sync > 1 else dataset_fn(None))
    model.fit(data, epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[losses])
    return losses.values, model.get_weights()


keras.utils.set_random_seed(0)
initial = build().get_weights()
one_loss, one_weights = train(training.make_strategy("default"), initial)
strategy = training.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
two_loss, two_weights = train(strategy, initial)
json.dump({{
    "replicas": strategy.num_replicas_in_sync, "one": one_loss, "two": two_loss,
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(one_weights, initial)),
    "weights": max(float(np.abs(a - b).max()) for a, b in zip(one_weights, two_weights)),
}}, open({out!r}, "w"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("job", ["detection", "segmentation"])
def test_mirrored_two_cpus_matches_one_device(tmp_path, job):
    out = tmp_path / "result.json"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(repo=REPO, job=job, out=str(out))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    print(f"{job}: single-device loss {result['one']}, mirrored (2 replicas) loss "
          f"{result['two']}, largest weight difference {result['weights']:.2e}")
    assert result["replicas"] == 2 and len(result["one"]) == 3
    assert result["moved"] > 1e-3  # the steps did train
    np.testing.assert_allclose(result["two"], result["one"], rtol=1e-4)
    assert result["weights"] < 1e-4
