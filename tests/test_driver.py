"""The shared training driver: resume after an interruption, NaN stop, history and curves."""

import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.jobs import driver


def _data():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill after epoch 2")


def test_interrupted_run_resumes_from_last_epoch(tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        driver.fit(_model(), _data(), 4, run_dir, verbose=0, extra_callbacks=[_Crash()])
    assert driver.read_history(run_dir)["epoch"] == [0.0, 1.0]

    resumed = _model()
    driver.fit(resumed, _data(), 4, run_dir, verbose=0)
    history = driver.read_history(run_dir)
    assert history["epoch"] == [0.0, 1.0, 2.0, 3.0]  # epochs 3 and 4 only, nothing repeated
    # the same as an uninterrupted run of 4 epochs
    straight = _model()
    straight.fit(_data(), epochs=4, verbose=0)
    np.testing.assert_allclose(resumed.get_weights()[0], straight.get_weights()[0], atol=1e-5)
    assert os.path.exists(os.path.join(run_dir, "curves.png"))
    assert os.path.exists(os.path.join(run_dir, "last.keras"))


@pytest.mark.slow
def test_sigkilled_process_resumes(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, keras
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_driver import _data, _model
        from pipelines.jobs import driver

        class Slow(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                print("epoch-done", epoch, flush=True)
                time.sleep(60 if epoch == 2 else 0.1)

        driver.fit(_model(), _data(), 4, {str(tmp_path / "run")!r}, verbose=0,
                   extra_callbacks=[Slow()])
        print("finished", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch-done 2"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    history = driver.read_history(str(tmp_path / "run"))
    # killed during epoch 3's end, after the driver's callbacks saved it
    assert history["epoch"] == [0.0, 1.0, 2.0]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    epochs_run = [int(l.split()[1]) for l in done.stdout.splitlines() if l.startswith("epoch-done")]
    assert epochs_run == [3], done.stdout  # only epoch 4 runs again
    assert "finished" in done.stdout
    assert driver.read_history(str(tmp_path / "run"))["epoch"] == [0.0, 1.0, 2.0, 3.0]


def test_nan_loss_stops_with_message(tmp_path, capsys):
    x = np.ones((32, 4), "float32")
    y = np.full((32, 1), np.nan, "float32")
    model = _model()
    message = driver.fit(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), 3,
                         str(tmp_path), verbose=0)
    assert message is not None and "loss became nan at epoch 1, batch 1" in message
    assert "training stopped" in capsys.readouterr().out


class _DivergeInEpoch(keras.callbacks.Callback):
    """Turns the weights to NaN at the start of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.layers[0].kernel.assign(np.full((4, 1), np.nan, "float32"))


def test_diverged_epoch_keeps_the_last_good_model_and_resume_state(tmp_path):
    run_dir = str(tmp_path / "run")
    message = driver.fit(_model(), _data(), 4, run_dir, verbose=0,
                         extra_callbacks=[_DivergeInEpoch(1)])
    assert message is not None and "epoch 2" in message
    # the model file and the resume state stay those of epoch 1 (finite weights)
    saved = keras.saving.load_model(os.path.join(run_dir, "last.keras"))
    assert np.all(np.isfinite(saved.get_weights()[0]))
    state = driver.callback_classes("keras").ResumeState(os.path.join(run_dir, "backup"),
                                                         run_dir)
    assert state.epochs_done() == 1
    resumed = _model()  # a rerun resumes after epoch 1, from finite weights
    driver.fit(resumed, _data(), 2, run_dir, verbose=0)
    assert np.all(np.isfinite(resumed.get_weights()[0]))
    assert driver.read_history(run_dir)["epoch"] == [0.0, 1.0]


def test_write_metrics(tmp_path):
    path = driver.write_metrics(str(tmp_path), {"AP50": 0.5})
    assert open(path).read().strip().startswith("{")


def test_check_fields_intervals_and_choices():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Recipe:
        rate: float = 0.5
        steps: int = 1
        mode: str = "a"

    driver.check_fields(Recipe(), ranges={"rate": "(0, 1)", "steps": "[1, inf)"},
                        choices={"mode": ("a", "b")})
    for recipe, message in ((Recipe(rate=0.0), r"Recipe\.rate must be in \(0, 1\), got 0\.0"),
                            (Recipe(rate=1.0), r"rate must be in \(0, 1\), got 1\.0"),
                            (Recipe(rate="0.5"), r"rate must be in \(0, 1\), got '0\.5'"),
                            (Recipe(steps=True), r"steps must be in \[1, inf\), got True"),
                            (Recipe(steps=0), r"steps must be in \[1, inf\), got 0"),
                            (Recipe(mode="c"), r"mode must be one of 'a', 'b', got 'c'")):
        with pytest.raises(ValueError, match=message):
            driver.check_fields(recipe, ranges={"rate": "(0, 1)", "steps": "[1, inf)"},
                                choices={"mode": ("a", "b")})
    driver.check_fields(Recipe(rate=1.0, steps=0), ranges={"rate": "[0, 1]", "steps": "[0, 0]"})


def test_fit_builds_the_optimizer_first_under_the_model_strategy(tmp_path):
    """Adam's slots exist before the first step, and are mirrored like the weights when the
    model was made under a MirroredStrategy (one CPU device: the scope is what matters)."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    seen = {}

    class Check(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            optimizer = self.model.optimizer
            seen["built"] = optimizer.built
            seen["mirrored"] = [isinstance(v.value, tf.distribute.DistributedValues)
                                for v in optimizer.variables]

    driver.fit(model, _data(), 1, str(tmp_path / "run"), verbose=0, extra_callbacks=[Check()])
    assert seen["built"] and len(seen["mirrored"]) == 2 + 2 * 2  # iterations, lr, m and v of 2
    assert all(seen["mirrored"])
