"""The run sequence the jobs share (pipelines/jobs/training.py), with a tiny model as the job."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from pipelines.jobs import driver, training


# A recipe with the fields every job's recipe has, and one of its own (width).
TinyRecipe = dataclasses.make_dataclass("TinyRecipe", [
    (name, type(value), dataclasses.field(default=value)) for name, value in dict(
        alpha=1.0, batch_size=4, epochs=2, learning_rate=0.05, warmup_epochs=0.0,
        weight_decay=0.0, bn_momentum=0.9, optimizer="sgd", width=3, seed=0).items()],
    frozen=True)


def test_cosine_schedule_warms_up_then_decays_to_alpha():
    schedule = training.cosine_schedule(0.1, total_steps=110, warmup_steps=10, alpha=0.01)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(values, [0.0, 0.05, 0.1, 0.1 * (0.01 + 0.99 * 0.5), 0.001],
                               rtol=1e-6, atol=1e-9)
    plain = training.cosine_schedule(0.1, total_steps=100)
    assert float(plain(0)) == pytest.approx(0.1) and float(plain(100)) == pytest.approx(0.0)


def test_make_optimizer_settings_and_bad_name():
    rmsprop = training.make_optimizer("rmsprop", 0.01)
    assert (rmsprop.rho, rmsprop.momentum, rmsprop.epsilon) == (0.9, 0.9, 1.0)
    sgd = training.make_optimizer("sgd", 0.01, momentum=0.8, nesterov=True, use_ema=True)
    assert (sgd.momentum, sgd.nesterov, sgd.use_ema) == (0.8, True, True)
    assert isinstance(training.make_optimizer("adam", 0.01), keras.optimizers.Adam)
    with pytest.raises(ValueError, match="optimizer must be rmsprop, adam or sgd, got 'lamb'"):
        training.make_optimizer("lamb", 0.01)


def test_check_recipe_shared_and_own_fields():
    training.check_recipe(TinyRecipe(), ranges={"width": "[1, inf)"})
    for change, message in ((dict(alpha=0.0), r"TinyRecipe\.alpha must be in \(0, inf\)"),
                            (dict(bn_momentum=1.0), r"bn_momentum must be in \[0, 1\)"),
                            (dict(optimizer="lamb"), "optimizer must be one of 'rmsprop'"),
                            (dict(warmup_epochs=2.0), r"warmup_epochs must be in \[0, epochs=2\)"),
                            (dict(width=0), r"TinyRecipe\.width must be in \[1, inf\)")):
        with pytest.raises(ValueError, match=message):
            training.check_recipe(TinyRecipe(**change), ranges={"width": "[1, inf)"})


def test_steps_per_epoch():
    assert training.steps_per_epoch(TinyRecipe(), 10) == 2
    assert training.steps_per_epoch(TinyRecipe(), 3) == 1  # at least one step
    assert training.steps_per_epoch(dataclasses.make_dataclass(
        "R", [("batch_size", int, 4), ("steps_per_epoch", int, 7)])(), 100) == 7


def _tiny_job(calls, untrained):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0]], "float32")).astype("float32")

    def load(recipe):
        calls.append("load")
        return training.Data(train=(x, y), val=(x, y), num_classes=1, num_train=len(x),
                             origin="tiny", extra={"note": 1})

    def build_model(recipe, data):
        calls.append("build_model")
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(recipe.width),
                                  keras.layers.Dense(data.num_classes)])
        untrained.append(float(np.mean((model.predict(x, verbose=0) - y) ** 2)))
        return model

    def make_optimizer(recipe, steps):
        calls.append(("make_optimizer", steps))
        return training.make_optimizer(recipe.optimizer, recipe.learning_rate)

    def train_data(model, recipe, data, steps, input_context):
        calls.append("train_data")
        assert model.optimizer is not None  # compiled before the data is made
        return tf.data.Dataset.from_tensor_slices(data.train).repeat().batch(recipe.batch_size)

    def evaluate(model, recipe, data, run_dir, nan):
        calls.append("evaluate")
        return {"mse": float(np.mean((model.predict(data.val[0], verbose=0) - data.val[1]) ** 2)),
                "note": data.extra["note"]}

    return training.Job(check_recipe=lambda r: calls.append("check_recipe"), load=load,
                        build_model=build_model, make_optimizer=make_optimizer,
                        compile_args=lambda recipe, data: {"loss": "mse"},
                        train_data=train_data, evaluate=evaluate, seed_weights=True)


def test_run_job_runs_the_hooks_in_order_and_writes_the_run_dir(tmp_path):
    calls, untrained = [], []
    run_dir = tmp_path / "run"
    metrics = training.run_job(_tiny_job(calls, untrained), TinyRecipe(), str(run_dir),
                               verbose=0)
    assert calls == ["check_recipe", "load", "build_model", ("make_optimizer", 3), "train_data",
                     "evaluate"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics
    assert metrics["note"] == 1 and metrics["dataset"] == "tiny"
    assert metrics["train_images_listed"] == 12 and metrics["stopped_on_nan"] is None
    assert metrics["recipe"] == dataclasses.asdict(TinyRecipe())
    # two epochs of 3 SGD steps on y = x1 - 2 x2: 3.8 -> 0.45 (seeded by the recipe)
    assert metrics["mse"] < untrained[0] / 3
    for name in ("recipe.json", "history.csv", "last.keras", "curves.png"):
        assert (run_dir / name).exists(), name
    assert len(driver.read_history(str(run_dir))["epoch"]) == 2
    # another recipe in the same run dir: refused before any data is loaded
    calls.clear()
    with pytest.raises(driver.RunDirError, match="width: 3 in the run, 5 now"):
        training.run_job(_tiny_job(calls, []), TinyRecipe(width=5), str(run_dir), verbose=0)
    assert calls == ["check_recipe"]


@pytest.mark.parametrize("jit_compile", [None, True, False])
def test_run_job_passes_jit_compile_to_compile(tmp_path, monkeypatch, jit_compile):
    seen = []
    compile_ = keras.Model.compile

    def spy(model, *args, **kwargs):
        seen.append(kwargs.get("jit_compile", "keras' choice"))
        return compile_(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    training.run_job(_tiny_job([], []), TinyRecipe(epochs=1), str(tmp_path / "run"), verbose=0,
                     jit_compile=jit_compile)
    assert seen[0] == ("keras' choice" if jit_compile is None else jit_compile)


def test_strategy_names_are_the_command_line_names():
    assert training.strategy_name(None) == "default"
    assert training.strategy_name(training.make_strategy("default")) == "default"
    assert training.strategy_name(training.make_strategy("mirrored", devices=["/cpu:0"])) == \
        "mirrored"
