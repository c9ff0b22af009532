"""The ImageNet classification job: recipe, schedule, model, loss, EMA, evaluation by hand, the
strategies, and an end-to-end run killed and resumed."""

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.jobs import classification as job
from pipelines.data import imagenet as imagenet_data


def write_jpeg(path, colour, size=(40, 32), fmt="JPEG"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.broadcast_to(np.asarray(colour, np.uint8), (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, fmt)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# ----------------------------------------------------------------------------- recipe


def test_paper_recipe():
    p = job.PAPER
    assert (p.optimizer, p.rmsprop_rho, p.momentum, p.rmsprop_epsilon) == ("rmsprop", 0.9, 0.9,
                                                                           1.0)
    assert (p.learning_rate, p.lr_batch_size, p.lr_decay, p.lr_decay_epochs) == (0.045, 96,
                                                                                 0.98, 1.0)
    assert (p.weight_decay, p.label_smoothing, p.dropout) == (4e-5, 0.1, 0.2)
    assert p.use_ema and p.ema_momentum == 0.9999
    assert (p.alpha, p.resolution, p.min_crop_area, p.crop_fraction) == (1.0, 224, 0.08, 0.875)
    # one CLI flag per field: every field a scalar
    for field in dataclasses.fields(job.ImagenetRecipe):
        assert type(field.default) in (int, float, str, bool), field.name
    e = job.EMBEDDED
    assert e.bn_momentum == 0.9 and e.alpha < 1 and e.resolution < 224


def test_check_recipe_names_the_field_and_range():
    job.check_recipe(job.PAPER)
    job.check_recipe(job.EMBEDDED)
    for change, message in (
            (dict(alpha=0.0), r"ImagenetRecipe\.alpha must be in \(0, inf\), got 0\.0"),
            (dict(resolution=16), r"resolution must be in \[32, inf\), got 16"),
            (dict(batch_size=0), r"batch_size must be in \[1, inf\)"),
            (dict(lr_decay=1.5), r"lr_decay must be in \(0, 1\], got 1\.5"),
            (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
            (dict(min_crop_area=0.0), r"min_crop_area must be in \(0, 1\]"),
            (dict(learning_rate=float("nan")), r"learning_rate must be in \(0, inf\), got nan"),
            (dict(warmup_epochs=300.0), r"warmup_epochs must be in \[0, epochs=300\)"),
            (dict(optimizer="lamb"), r"optimizer must be one of 'rmsprop', 'adam', 'sgd', "
                                     r"got 'lamb'"),
            (dict(schedule="step"), r"schedule must be one of 'exponential', 'cosine'")):
        with pytest.raises(ValueError, match=message):
            job.check_recipe(dataclasses.replace(job.PAPER, **change))
    with pytest.raises(ValueError, match="dropout"):  # checked before any data is read
        job.run(data_dir="/nonexistent", recipe=dataclasses.replace(job.PAPER, dropout=1.0))


def test_learning_rate_schedule():
    recipe = dataclasses.replace(job.PAPER, batch_size=192)
    assert job.peak_learning_rate(recipe) == pytest.approx(0.09)  # linear in the batch
    schedule = job.make_schedule(recipe, steps_per_epoch=100)
    assert float(schedule(0)) == pytest.approx(0.09)
    assert float(schedule(99)) == pytest.approx(0.09)  # staircase: constant within an epoch
    assert float(schedule(250)) == pytest.approx(0.09 * 0.98 ** 2)
    slim = job.make_schedule(dataclasses.replace(recipe, lr_decay_epochs=2.5), 100)
    assert float(slim(499)) == pytest.approx(0.09 * 0.98)
    warm = job.make_schedule(dataclasses.replace(recipe, warmup_epochs=1.0), 100)
    assert float(warm(0)) == 0.0
    assert float(warm(50)) == pytest.approx(0.045)
    assert float(warm(100)) == pytest.approx(0.09)
    assert float(warm(300)) == pytest.approx(0.09 * 0.98 ** 2)
    cosine = job.make_schedule(dataclasses.replace(recipe, schedule="cosine", epochs=2), 100)
    assert float(cosine(100)) == pytest.approx(0.045)  # halfway down
    with pytest.raises(ValueError, match="schedule"):
        job.make_schedule(dataclasses.replace(recipe, schedule="step"), 100)


TINY = dataclasses.replace(job.PAPER, alpha=0.35, resolution=32, batch_size=4, epochs=3,
                           steps_per_epoch=3, shuffle_buffer=16)


def test_model_weight_decay_as_tf_slim():
    keras.utils.set_random_seed(0)
    model = job.build_model(TINY, num_classes=3)
    plain = job.build_model(dataclasses.replace(TINY, weight_decay=0.0), num_classes=3)
    assert model.count_params() == plain.count_params()
    assert [l.name for l in model.layers[1:]] == [l.name for l in plain.layers[1:]]
    decayed = [l for l in model.layers if getattr(l, "kernel_regularizer", None) is not None]
    convs = [l for l in model.layers if type(l) in (keras.layers.Conv2D, keras.layers.Dense)]
    assert decayed == convs and len(convs) == 36  # Conv1, 17 blocks' 1x1s, Conv_1, logits
    assert all(getattr(l, "depthwise_regularizer", None) is None for l in model.layers)
    expected = sum(4e-5 * float(np.sum(l.kernel.numpy() ** 2)) / 2 for l in convs)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert model.output_shape == (None, 3) and model.layers[-1].activation.__name__ == "linear"
    synced = job.build_model(dataclasses.replace(TINY, sync_bn=True), num_classes=3)
    norms = [l for l in synced.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and all(l.synchronized for l in norms)


def test_smoothed_crossentropy_by_hand():
    loss = job.SmoothedCrossentropy(3, label_smoothing=0.1)
    logits = np.array([[2.0, 1.0, 0.0]], "float32")
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    log_softmax = logits[0] - np.log(np.exp(logits[0]).sum())
    assert float(loss(np.array([0]), logits)) == pytest.approx(-(target * log_softmax).sum(),
                                                               rel=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.num_classes, again.label_smoothing) == (3, 0.1)


def test_eval_uses_the_ema_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
    raw = {}

    class Grab(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raw["kernel"] = self.model.layers[0].kernel.numpy().copy()

    x = np.random.RandomState(0).normal(size=(32, 2)).astype("float32")
    model.fit(x, x[:, :1] * 3, epochs=1, batch_size=4, verbose=0, callbacks=[Grab()])
    average = model.optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), average)
    assert np.abs(average - raw["kernel"]).max() > 1e-3  # the average, not the last step


# ----------------------------------------------------------------------------- evaluation

# Hand-made: the stub's logits are k * r (r = mean red in [-1, 1]) for class k, so a reddish
# image (r > 0) ranks classes 5, 4, 3, 2, 1, 0 and a dark one (r < 0) ranks 0, 1, 2, 3, 4, 5.
EVAL_CASES = (  # (label, reddish, in top-1, in top-5)
    (5, True, True, True),
    (0, True, False, False),
    (3, True, False, True),
    (0, False, True, True),
    (5, False, False, False),
    (2, False, False, True),
    (1, True, False, True),
)
WNIDS6 = tuple(f"n0000000{i}" for i in range(6))


def stub_model():
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(6)])
    kernel = np.zeros((3, 6), "float32")
    kernel[0] = np.arange(6)
    model.layers[-1].set_weights([kernel, np.zeros(6, "float32")])
    return model


@pytest.fixture
def eval_folder(tmp_path):
    lines = []
    for i, (label, reddish, _, _) in enumerate(EVAL_CASES):
        name = f"v{i}.JPEG"
        write_jpeg(tmp_path / "val" / name, (230, 40, 40) if reddish else (20, 90, 90))
        lines.append(f"{name} {WNIDS6[label]}")
    (tmp_path / "val" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 broken")
    lines.append(f"broken.JPEG {WNIDS6[0]}")
    (tmp_path / "val_labels.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_evaluate_by_hand(eval_folder):
    source = imagenet_data.folder_source(eval_folder, "val", class_names=WNIDS6)
    dataset = imagenet_data.eval_dataset(source, 3, 16)  # batches of 3, 3, 2: last partial
    result = job.evaluate(stub_model(), dataset)
    assert result["images"] == 7 and result["skipped"] == 1
    assert result["top1"] == pytest.approx(2 / 7)
    assert result["top5"] == pytest.approx(5 / 7)
    assert sum(c[2] for c in EVAL_CASES) == 2 and sum(c[3] for c in EVAL_CASES) == 5
    top3 = job.evaluate(stub_model(), imagenet_data.eval_dataset(source, 3, 16), top_k=3)
    assert top3["top5"] == pytest.approx(4 / 7)  # 5 and 3 (reddish), 0 and 2 (dark)


def test_run_eval_writes_metrics(eval_folder, tmp_path):
    path = str(tmp_path / "stub.keras")
    stub_model().save(path)
    source = imagenet_data.folder_source(eval_folder, "val", class_names=WNIDS6)
    metrics = job.run_eval(path, val_source=source, batch_size=4)
    written = json.loads(open(tmp_path / "metrics.json").read())
    assert written["top1"] == metrics["top1"] == pytest.approx(2 / 7)
    assert written["val_images"] == 7 and written["skipped_images"] == {"val": 1}
    assert written["skipped_files"]["val"][0].endswith("broken.JPEG")
    seven = imagenet_data.folder_source(eval_folder, "val", class_names=WNIDS6 + ("n9",))
    with pytest.raises(ValueError, match="6 outputs but .* has 7 classes"):
        job.run_eval(path, val_source=seven)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        job.run_eval(str(tmp_path / "missing.keras"), val_source=source)


# ----------------------------------------------------------------------------- strategies


def test_make_strategy(monkeypatch):
    assert job.make_strategy("default") is tf.distribute.get_strategy()
    assert job.make_strategy("mirrored", devices=["/cpu:0"]).num_replicas_in_sync == 1
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        job.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="strategy must be one of"):
        job.make_strategy("horovod")


# ----------------------------------------------------------------------------- end to end

WNIDS3 = ("n01440764", "n01443537", "n01484850")


def make_tiny_imagenet(root):
    colours = ((220, 30, 30), (30, 200, 40), (40, 60, 230))
    for wnid, colour in zip(WNIDS3, colours):
        for i in range(5):
            write_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", colour)
        for i in range(2):
            write_jpeg(root / "val" / wnid / f"val_{wnid}_{i}.JPEG", colour)
    (root / "train" / WNIDS3[0] / "corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    return root


@pytest.mark.slow
def test_run_killed_and_restarted_continues(tmp_path):
    data_dir = make_tiny_imagenet(tmp_path / "data")
    run_dir = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import dataclasses, sys, time, keras
        sys.path.insert(0, {os.getcwd()!r})
        from pipelines.jobs import classification as job

        class Slow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                print("epoch-done", epoch, int(self.model.optimizer.iterations), flush=True)
                time.sleep(60 if epoch == 1 else 0)

        recipe = dataclasses.replace(job.PAPER, alpha=0.35, resolution=32, batch_size=4,
                                     epochs=3, steps_per_epoch=3, shuffle_buffer=16,
                                     weight_decay=0.0, use_ema=True, ema_momentum=0.9)
        job.run(data_dir={str(data_dir)!r}, run_dir={str(run_dir)!r}, recipe=recipe,
                verbose=0, callbacks=[Slow()])
        print("finished", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("epoch-done 1"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(re.search(r"skipped \d+ undecodable train images", line) for line in seen), seen
    from pipelines.jobs import driver

    assert driver.read_history(str(run_dir))["epoch"] == [0.0, 1.0]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = [line.split()[1:] for line in done.stdout.splitlines()
              if line.startswith("epoch-done")]
    assert epochs == [["2", "9"]]  # only epoch 3 ran, the optimizer's step count went on
    history = driver.read_history(str(run_dir))
    assert history["epoch"] == [0.0, 1.0, 2.0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # No top-1 floor here (`python tests/measure_floors.py imagenet 3` printed 0.333 untrained
    # and after this run: solid-colour images); test_embedded_run_learns holds the floor.
    assert metrics["val_images"] == 6 and 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert metrics["skipped_images"]["val"] == 0 and metrics["num_classes"] == 3
    for name in ("curves.png", "model.keras", "last.keras", "history.csv"):
        assert (run_dir / name).exists(), name
    model = keras.saving.load_model(str(run_dir / "model.keras"), compile=False)
    assert model.output_shape == (None, 3)


@pytest.mark.slow
def test_embedded_run_learns(tmp_path):
    """The embedded job, 3 epochs instead of 30, must beat chance (0.10 for its 10 classes) by
    far. Its floors (tests/measure_floors.py, FLOORS): `keras-mnv2 train imagenet --epochs 3
    --seed S` printed val top-1 0.478, 0.528, 0.392, 0.470, 0.496 and top-5 0.950, 0.952, 0.906,
    0.948, 0.920 (S = 0-4, AMD EPYC); with `--learning-rate 1e-7` (a model that learns
    nothing) top-1 0.090 and 0.058, top-5 0.492 and 0.512 (S = 0, 1). Each floor lies at least
    twice as far below the worst trained figure as above the best broken one."""
    recipe = dataclasses.replace(job.EMBEDDED, epochs=3)
    metrics = job.run(data_root=str(tmp_path / "data"), run_dir=str(tmp_path / "run"), recipe=recipe,
                      verbose=0)
    assert metrics["top1"] > 0.18, f"top-1 {metrics['top1']:.3f} (trained 0.392-0.528)"
    assert metrics["top5"] > 0.63, f"top-5 {metrics['top5']:.3f} (trained 0.906-0.952)"
