"""The training step profile (benchmarks/train_profile.py) on a tiny run: the table is printed
with a finite number in every cell, and its parts add up (no timing floors)."""

import math
import re

import numpy as np
import pytest

from benchmarks import train_profile


def test_spread_of_known_values():
    s = train_profile.spread([0.001, 0.002, 0.003, 0.004, 0.010])
    assert (s.median, s.low, s.high, s.count) == (3.0, 1.0, 10.0, 5)
    assert (s.q25, s.q75) == pytest.approx((2.0, 4.0))
    one = train_profile.spread([0.5])
    assert (one.median, one.q25, one.q75) == (500.0, 500.0, 500.0)


@pytest.mark.slow
def test_profile_prints_the_breakdown_table(tmp_path, capsys):
    result = train_profile.main([
        "--train-images", "8", "--val-images", "2", "--input-size", "64", "--batch-size", "4",
        "--isolated-steps", "3", "--data-root", str(tmp_path / "coco"),
    ])
    out = capsys.readouterr().out
    assert result.steps_per_epoch == 2 and result.measured_steps == 2
    for label, s in result.rows.items():
        cells = re.search(re.escape(label) + r"((?:\s+[-\d.]+){6})\s*$", out, re.MULTILINE)
        assert cells, f"no table row for {label!r} in:\n{out}"
        values = [float(v) for v in cells.group(1).split()]
        assert all(math.isfinite(v) and v >= 0 for v in values), (label, values)
        assert s.low <= s.q25 <= s.median <= s.q75 <= s.high
    # durations that cannot be zero: steps, the pipeline's batches, epoch ends (two saves)
    for label in ("isolated step (train function), before fit",
                  "isolated step (train function), after fit",
                  "fit, wall per step (epoch ends included)",
                  "fit, train function (input fetch + step)", "input pipeline alone, per batch",
                  "fit, driver callbacks, epoch ends per step"):
        assert result.rows[label].low > 0, label
    # a step between batches holds the train function's call
    rows = result.rows
    assert rows["fit, batch begin to next batch begin"].low >= rows[
        "fit, train function (input fetch + step)"].low
    assert {"AtomicCheckpoint", "ResumeState", "StepCounter"} <= set(result.callbacks_by_name)
    ratio = re.search(r"fit / isolated step: ([\d.]+)", out)
    assert ratio and float(ratio.group(1)) > 0


def test_saves_after_the_driver_fix_build_no_throwaway_layers(tmp_path, monkeypatch):
    """The epoch-end saves: with ``driver._cache_keras_saving_skipsets`` Keras finds the skip
    sets it computed before, instead of building a reference Layer for each layer it walks
    (a third of a save's CPU time on the embedded SSDLite)."""
    import keras
    from keras.src.layers.layer import Layer

    from pipelines.jobs import driver

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    driver._cache_keras_saving_skipsets()
    made = []
    layer_init = Layer.__init__

    def counting_init(self, *args, **kwargs):
        made.append(type(self).__name__)
        layer_init(self, *args, **kwargs)

    monkeypatch.setattr(Layer, "__init__", counting_init)
    model.save(tmp_path / "model.keras")
    model.save_weights(tmp_path / "model.weights.h5")
    assert made == []
    monkeypatch.undo()
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = np.ones((1, 4), "float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
