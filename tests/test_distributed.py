"""Distributed training matches single-device training: MirroredStrategy over two logical CPU
devices and MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Both run in subprocesses: logical devices must be set before TensorFlow initializes, and each
worker of a multi-worker cluster is its own process (TF_CONFIG). The model is tiny (conv, batch
norm, conv, batch norm, logits) so that tracing stays short; the strategy, the input
distribution (``classification.distribute``), the optimizer and the loss are the job's own.

With synchronized batch norm (the recipe's ``sync_bn``) a step over two replicas of 4 images is
the same computation as a step over the 8 images on one device, so losses and weights agree up
to float rounding. With per-replica batch norm they do not (each replica normalizes with the
statistics of its own 4 images); the mirrored test measures that difference too. The data are
fixed tensors split explicitly (replica i of step k gets images 8k + 4i .. 8k + 4i + 3), so that
both runs see exactly the same batches.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3

COMMON = f"""
import dataclasses, json, os, sys
import numpy as np
sys.path.insert(0, {REPO!r})
import keras
import tensorflow as tf
from pipelines.jobs import classification as job

RECIPE = dataclasses.replace(job.PAPER, batch_size=8, use_ema=False)
L = keras.layers


def tiny_model(sync_bn):
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, use_bias=False, kernel_regularizer=keras.regularizers.L2(2e-5))(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9, synchronized=sync_bn)(x))
    x = L.Conv2D(16, 3, strides=2, use_bias=False)(x)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9, synchronized=sync_bn)(x))
    return keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["loss"]))


def dataset_fn(data):
    def make(ctx):
        ds = tf.data.Dataset.from_tensor_slices((data["images"], data["labels"]))
        if ctx is None:
            return ds.batch(8).repeat()
        # per-replica batches of 4; pipeline i takes batches i, i + n, ... (n pipelines)
        ds = ds.batch(ctx.get_per_replica_batch_size(8))
        return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).repeat()
    return make


def train(strategy, sync_bn, initial, data, steps={STEPS}):
    with strategy.scope():
        model = tiny_model(sync_bn)
        model.set_weights(initial)
        job.compile_model(model, RECIPE, 3, steps_per_epoch=100)
    losses = Losses()
    job.prepare_fit(model, strategy, dataset_fn(data))
    model.fit(job.distribute(strategy, dataset_fn(data)), epochs=1, steps_per_epoch=steps,
              verbose=0, callbacks=[losses])
    return losses.values, model.get_weights()


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))
"""


def start(path, code, env=None):
    path.write_text(COMMON + textwrap.dedent(code))
    return subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


def finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-4000:]
    return out


def write_data(path):
    rng = np.random.RandomState(1)
    images = rng.uniform(-1, 1, (8 * STEPS, 16, 16, 3)).astype("float32")
    labels = (np.arange(8 * STEPS) % 3).astype("int32")
    images[..., 0] += labels[:, None, None] * 0.5  # something to learn
    np.savez(path, images=images, labels=labels)
    return path


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(tmp_path):
    data = write_data(tmp_path / "data.npz")
    out = tmp_path / "result.json"
    proc = start(tmp_path / "mirrored.py", f"""
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        data = dict(np.load({str(data)!r}))
        keras.utils.set_random_seed(0)
        initial = tiny_model(False).get_weights()
        one_loss, one_weights = train(job.make_strategy("default"), False, initial, data)
        result = {{"one_device": {{"loss": one_loss,
                                  "moved": max_difference(one_weights, initial)}}}}
        for sync in (True, False):
            strategy = job.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
            loss, weights = train(strategy, sync, initial, data)
            result[str(sync)] = {{"replicas": strategy.num_replicas_in_sync, "loss": loss,
                                  "weights": max_difference(weights, one_weights)}}
        json.dump(result, open({str(out)!r}, "w"))
    """)
    finish(proc)
    result = json.loads(out.read_text())
    one = np.array(result["one_device"]["loss"])
    sync, plain = result["True"], result["False"]
    print(f"classification: single-device loss {one.tolist()}, mirrored (2 replicas, synchronized "
          f"batch norm) loss {sync['loss']}, largest weight difference {sync['weights']:.2e}; "
          f"per-replica batch norm loss {plain['loss']}")
    assert sync["replicas"] == plain["replicas"] == 2 and len(one) == STEPS
    assert result["one_device"]["moved"] > 1e-2  # the steps did train
    np.testing.assert_allclose(sync["loss"], one, rtol=1e-5)
    assert sync["weights"] < 1e-5
    # per-replica batch norm: a visible difference, far above rounding
    assert np.abs(np.array(plain["loss"]) - one).max() > 1e-3
    assert plain["weights"] > 100 * max(sync["weights"], 1e-7)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_processes_matches_one_device(tmp_path):
    data = write_data(tmp_path / "data.npz")
    keras_code = f"""
        data = dict(np.load({str(data)!r}))
        keras.utils.set_random_seed(0)
        initial = tiny_model(True).get_weights()  # the same in every process
    """
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    # the strategy first: collective ops must be configured before TensorFlow runs anything
    workers = [start(tmp_path / f"worker{i}.py", """
        strategy = job.make_strategy("multi_worker")
    """ + keras_code + f"""
        loss, weights = train(strategy, True, initial, data)
        np.savez({str(tmp_path)!r} + "/worker{i}.npz", *weights)
        json.dump({{"loss": loss, "replicas": strategy.num_replicas_in_sync,
                   "chief": job.is_chief(strategy)}},
                  open({str(tmp_path)!r} + "/worker{i}.json", "w"))
    """, env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": i}})})
               for i in range(2)]
    reference = start(tmp_path / "reference.py", keras_code + f"""
        loss, weights = train(job.make_strategy("default"), True, initial, data)
        np.savez({str(tmp_path / "one.npz")!r}, *weights)
        json.dump({{"loss": loss}}, open({str(tmp_path / "one.json")!r}, "w"))
    """)
    for proc in (*workers, reference):
        finish(proc)
    one = json.loads((tmp_path / "one.json").read_text())["loss"]
    one_weights = list(np.load(tmp_path / "one.npz").values())
    losses = []
    for i in range(2):
        result = json.loads((tmp_path / f"worker{i}.json").read_text())
        assert result["replicas"] == 2 and result["chief"] == (i == 0)
        losses.append(result["loss"])
        weights = list(np.load(tmp_path / f"worker{i}.npz").values())
        assert max(float(np.abs(a - b).max()) for a, b in zip(weights, one_weights)) < 1e-5
    print(f"classification: single-device loss {one}, two workers, mean loss "
          f"{np.mean(losses, axis=0).tolist()} (worker 0 {losses[0]}, worker 1 {losses[1]})")
    # Keras logs each worker's loss over its own 4 images; their mean is the 8-image loss
    assert np.abs(np.array(losses[0]) - losses[1]).max() > 1e-3
    np.testing.assert_allclose(np.mean(losses, axis=0), one, rtol=1e-5)
