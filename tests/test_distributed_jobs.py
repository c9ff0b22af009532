"""The detection and segmentation jobs under MirroredStrategy over two logical CPU devices, and
under MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1, match their
single-device run: the same global batch of 4, the same initial weights, 3 steps.

The model, optimizer, loss and input distribution are the jobs' own (``build_model``,
``make_optimizer`` of the PAPER recipes, the compiled loss, ``training.distribute`` with
``training.shard`` and ``training.per_replica_batch``, ``training.prepare_fit`` under the
multi-worker strategy), on a tiny configuration (alpha 0.35, 64 px, learning rate 1e-3, no
dropout: DeepLab's head would draw its own dropout masks on each replica). Batch norm is frozen
(inference mode) with moving statistics set from the data first: per-replica batch norm
normalizes each replica's 2 images with their own statistics, a different computation, and
synchronized batch norm over ~60 layers takes minutes to trace on 2 cores (the ImageNet test,
tests/test_distributed.py, covers it). With the initial statistics (mean 0, variance 1) the
detection loss did not depend on the images at all: two workers both reading the first worker's
images printed the very losses of the right split. With the data's statistics that mistake
moves the first step's loss by 3% (9.545 against 9.859).

Both losses divide by a count of the batch (positive anchors; labelled pixels), and under a
strategy each replica divides by its own count (the replicas' mean of their normalized losses).
The data make the counts equal on both replicas (every image has the same boxes; no pixel is
ignored), so that the runs are the same computation and differ only by float32 summation order
across replicas. The first step's losses agree to 1e-7 relative; in this regime (three steps on
random images, the loss rising) each step amplifies that rounding many-fold, to at most 2.2e-5
relative on the third step's loss and, on the weights, 1.1-1.4% of the largest weight change of
the three steps (2.2e-4 and 2.0e-4 of 0.016, detection; 1.0e-3 and 8.7e-4 of 0.077,
segmentation; mirrored and two workers, 2 CPU cores). The tolerances, 1e-3 relative on the
losses and 10% of the largest weight change on the weights, sit well above that and far below a
real difference: a loss not divided by the replicas doubles the loss, a worker given the wrong
images changes it by 3% from the first step, and different batches change the updates by about
their own size.

Under the multi-worker strategy Keras logs each worker's loss over its own 2 images (the workers'
images differ, so the two logs differ); their mean is the loss of the global batch.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_distributed import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import dataclasses, json, sys
import numpy as np
sys.path.insert(0, {repo!r})
import tensorflow as tf
from pipelines.jobs import detection, segmentation, training
{setup}
import keras

OUT = {out!r}
STEPS, BATCH = 3, 4
rng = np.random.RandomState(0)
images = rng.uniform(-1, 1, (STEPS * BATCH, 64, 64, 3)).astype("float32")

if {job!r} == "detection":
    from keras_mnv2.detection.losses import ssd_losses
    from keras_mnv2.detection.matching import encode_targets

    recipe = dataclasses.replace(detection.PAPER, alpha=0.35, input_size=64, batch_size=BATCH,
                                 epochs=2, warmup_epochs=0.0, learning_rate=1e-3)
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
                                 output_stride=8, aspp=False, batch_size=BATCH, epochs=2,
                                 dropout_rate=0.0, learning_rate=1e-3)
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
    # mirrored, one input pipeline: its per-replica batches go to the replicas in turn, so
    # replica i of step k gets images 4k + 2i, 4k + 2i + 1. Two workers, one pipeline each:
    # worker i reads images i, i + 2, ... (training.shard), so step k gives it 4k + i and
    # 4k + i + 2. Either way step k's global batch is the single-device one
    ds = tf.data.Dataset.from_tensor_slices((images, targets))
    ds = training.shard(ds, ctx)
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
    training.prepare_fit(model, strategy, dataset_fn)  # multi-worker only
    losses = Losses()
    data = (training.distribute(strategy, dataset_fn)
            if strategy.num_replicas_in_sync > 1 else dataset_fn(None))
    model.fit(data, epochs=1, steps_per_epoch=STEPS, verbose=0, callbacks=[losses])
    return losses.values, model.get_weights()


keras.utils.set_random_seed(0)
# the same in every process: random weights, and batch-norm statistics of the data (momentum 0:
# one pass in training mode sets each layer's moving statistics to those of its inputs). With
# the initial statistics (mean 0, variance 1) the loss would not depend on the images at all
model = build()
for layer in model._flatten_layers():
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.0
model(images, training=True)
initial = model.get_weights()
{main}
"""


# the process that trains on one device, then mirrored over two logical CPU devices
REFERENCE = dict(setup="""
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""", main="""
one_loss, one_weights = train(training.make_strategy("default"), initial)
strategy = training.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
two_loss, two_weights = train(strategy, initial)
np.savez(OUT + ".npz", *one_weights)
json.dump({"replicas": strategy.num_replicas_in_sync, "one": one_loss, "two": two_loss,
           "moved": max(float(np.abs(a - b).max()) for a, b in zip(one_weights, initial)),
           "weights": max(float(np.abs(a - b).max()) for a, b in zip(one_weights, two_weights))},
          open(OUT, "w"))
""")
# a worker of the two-process cluster (TF_CONFIG): the strategy first, as collective ops must be
# configured before TensorFlow runs anything
WORKER = dict(setup="""
strategy = training.make_strategy("multi_worker")
""", main="""
loss, weights = train(strategy, initial)
np.savez(OUT + ".npz", *weights)
json.dump({"loss": loss, "replicas": strategy.num_replicas_in_sync,
           "chief": training.is_chief(strategy)}, open(OUT, "w"))
""")


def start(tmp_path, name, job, parts, env=None):
    out = tmp_path / f"{name}.json"
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(SCRIPT).format(repo=REPO, job=job, out=str(out), **parts))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return proc, out


def finish(proc, out, timeout=600):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.read_text()), list(np.load(str(out) + ".npz").values())


@pytest.mark.slow
@pytest.mark.parametrize("job", ["detection", "segmentation"])
def test_mirrored_and_two_workers_match_one_device(tmp_path, job):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = [start(tmp_path, f"worker{i}", job, WORKER, env={"TF_CONFIG": json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)]
    reference = start(tmp_path, "reference", job, REFERENCE)
    result, one_weights = finish(*reference)
    runs = [finish(*worker) for worker in workers]
    worker_losses = [run["loss"] for run, _ in runs]
    two_workers = np.mean(worker_losses, axis=0)
    weight_gaps = [max(float(np.abs(a - b).max()) for a, b in zip(weights, one_weights))
                   for _, weights in runs]
    print(f"{job}: single-device loss {result['one']}\n"
          f"{job}: mirrored (2 replicas) loss {result['two']}, largest weight difference "
          f"{result['weights']:.2e}\n"
          f"{job}: two workers, mean loss {two_workers.tolist()} (worker 0 "
          f"{worker_losses[0]}, worker 1 {worker_losses[1]}), largest weight difference "
          f"{max(weight_gaps):.2e}")
    assert result["replicas"] == 2 and len(result["one"]) == 3
    assert result["moved"] > 1e-3  # the steps did train
    np.testing.assert_allclose(result["two"], result["one"], rtol=1e-3)
    assert result["weights"] < 0.1 * result["moved"]
    for i, (run, _) in enumerate(runs):
        assert run["replicas"] == 2 and run["chief"] == (i == 0) and len(run["loss"]) == 3
    np.testing.assert_allclose(two_workers, result["one"], rtol=1e-3)
    assert max(weight_gaps) < 0.1 * result["moved"]


# one worker of a two-process ``keras-mnv2 train coco --strategy multi_worker`` on tiny data
RUN_JOB = """
import dataclasses, json, sys
sys.path.insert(0, {repo!r})
from pipelines.jobs import detection, training
strategy = training.make_strategy("multi_worker")
recipe = dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=4, epochs=1,
                             warmup_epochs=0.0)
metrics = detection.run(coco_dir={root!r}, run_dir={run_dir!r}, recipe=recipe, verbose=0,
                        strategy=strategy)
json.dump(sorted(metrics), open({out!r}, "w"))
"""


@pytest.mark.slow
def test_multi_worker_job_evaluates_on_the_chief_only(tmp_path):
    from pipelines.jobs import driver
    from pipelines.synthetic import coco as synthetic_coco

    root = tmp_path / "coco"
    synthetic_coco.generate(root, num_train=8, num_val=2, image_size=64, num_classes=2,
                            min_scale=0.3, max_objects=3, crowd_fraction=0.0)
    run_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for i in range(2):
        script = tmp_path / f"worker{i}.py"
        script.write_text(RUN_JOB.format(repo=REPO, root=str(root), run_dir=str(run_dir),
                                         out=str(tmp_path / f"worker{i}.json")))
        procs.append(subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}})}))
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, err[-4000:]
    chief, other = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert "AP50" in chief and "AP50" not in other  # evaluation on the chief alone
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["strategy"] == "multi_worker" and saved["replicas"] == 2
    for name in ("detections_val.json", "detections.png", "history.csv", "last.keras"):
        assert (run_dir / name).exists(), name
    # the other worker trained the same steps, its files in run_dir/worker_1
    worker_dir = run_dir / "worker_1"
    assert (worker_dir / "history.csv").exists()
    assert not any((worker_dir / name).exists()
                   for name in ("metrics.json", "detections_val.json", "detections.png"))
    losses = [driver.read_history(str(d))["loss"] for d in (run_dir, worker_dir)]
    print(f"detection job, two workers: chief loss {losses[0]}, worker 1 loss {losses[1]}")
    assert all(len(loss) == 1 and np.isfinite(loss[0]) for loss in losses)


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from pipelines.jobs import driver, training
from tests.test_training import TinyRecipe, _tiny_job


class Crash(keras.callbacks.Callback):  # after the driver's callbacks have saved epoch 2
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 2")


def run(run_dir, callbacks=()):
    strategy = training.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    return training.run_job(_tiny_job([], []), TinyRecipe(epochs=4), run_dir, verbose=0,
                            strategy=strategy, callbacks=callbacks)


try:
    run({killed!r}, [Crash()])
except KeyboardInterrupt:
    print("killed after epoch", len(driver.read_history({killed!r})["epoch"]), flush=True)
resumed = run({killed!r})
straight = run({straight!r})
print("epochs", driver.read_history({killed!r})["epoch"])
a = keras.saving.load_model({killed!r} + "/last.keras").get_weights()
b = keras.saving.load_model({straight!r} + "/last.keras").get_weights()
print("difference", max(float(np.abs(x - y).max()) for x, y in zip(a, b)))
print("strategy", resumed["strategy"], resumed["replicas"], resumed["mse"], straight["mse"])
"""


@pytest.mark.slow
def test_mirrored_run_resumes_after_a_kill_like_an_uninterrupted_one(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT.format(repo=REPO, killed=str(tmp_path / "killed"),
                                           straight=str(tmp_path / "straight")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    print(out)
    assert "killed after epoch 2" in out
    assert "resuming after epoch 2 of 4" in out  # the driver's resume state, under the strategy
    assert "epochs [0.0, 1.0, 2.0, 3.0]" in out  # each epoch once
    assert "strategy mirrored 2" in out
    # the resumed run ends where an uninterrupted one does (weights of order 1; the two runs are
    # the same computation, up to float rounding across the replicas' reductions)
    difference = float(out.split("difference ")[1].split()[0])
    assert difference < 1e-5
