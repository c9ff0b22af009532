"""The training driver shared by the jobs: callbacks, resume after a kill, curves and metrics.

A run directory holds everything a job writes:
    backup/        BackupAndRestore state (a killed run restarted with the same command resumes)
    last.keras     the model after the latest epoch
    history.csv    one row per epoch (appended across restarts)
    logs/          TensorBoard
    curves.png     training curves, drawn from history.csv
    metrics.json   the evaluation figures
"""

import contextlib
import csv
import json
import math
import numbers
import os
import re

import keras


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss, saying which batch and epoch."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.message = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.message = (
                f"loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}: training "
                "stopped (lower the learning rate, or check the data for broken annotations)"
            )
            print(f"\n{self.message}", flush=True)
            self.model.stop_training = True


def callbacks(run_dir, save_model=True):
    """Progress-independent callbacks every job uses; see the module docstring for the files."""
    os.makedirs(run_dir, exist_ok=True)
    result = [
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"), delete_checkpoint=False),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False,
                                    profile_batch=0),
        StopOnNaN(),
    ]
    if save_model:
        result.append(keras.callbacks.ModelCheckpoint(os.path.join(run_dir, "last.keras")))
    return result


def fit(model, train_data, epochs, run_dir, validation_data=None, steps_per_epoch=None,
        verbose="auto", extra_callbacks=()):
    """``model.fit`` with the shared callbacks; returns the StopOnNaN message or None.

    The compiled optimizer is built first, eagerly, under ``model.distribute_strategy``.

    Restarting the same command after a kill continues from the last finished epoch (the
    BackupAndRestore state in ``run_dir/backup``); a finished run is not trained again.
    """
    if model.optimizer is not None and not model.optimizer.built:
        # Slot variables made now, eagerly: made inside the first traced train step they cost
        # ~20x more each, and the step is traced twice (about a minute on 2 cores). Under the
        # model's strategy, so that they are distributed like the weights.
        # (JAX and torch models have no distribute_strategy.)
        strategy = getattr(model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model.optimizer.build(model.trainable_variables)
    cbs = callbacks(run_dir) + list(extra_callbacks)
    model.fit(train_data, epochs=epochs, validation_data=validation_data,
              steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=verbose)
    plot_curves(run_dir)
    nan = next(cb for cb in cbs if isinstance(cb, StopOnNaN))
    return nan.message


def check_fields(recipe, ranges=(), choices=()):
    """Raises ValueError naming the first field of ``recipe`` outside what it may hold.

    ``ranges`` maps a field name to its interval, written as in the message: ``"(0, inf)"``,
    ``"[0, 1)"``, ``"[1, inf)"``; ``choices`` maps a field name to the tuple of its values.
    """
    cls = type(recipe).__name__
    for name, interval in dict(ranges).items():
        low_bracket, low, high, high_bracket = re.fullmatch(
            r"([\[(])\s*([^,\s]+)\s*,\s*([^\]\)\s]+)\s*([\])])", interval).groups()
        low, high = float(low), float(high)
        value = getattr(recipe, name)
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and (value >= low if low_bracket == "[" else value > low)
              and (value <= high if high_bracket == "]" else value < high))
        if not ok:
            raise ValueError(f"{cls}.{name} must be in {interval}, got {value!r}")
    for name, allowed in dict(choices).items():
        value = getattr(recipe, name)
        if value not in allowed:
            raise ValueError(f"{cls}.{name} must be one of {', '.join(map(repr, allowed))}, "
                             f"got {value!r}")


def read_history(run_dir):
    """history.csv as {column: [values]}, keeping only the last row of each epoch (a resumed run
    may have logged an epoch twice)."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("epoch") in (None, "epoch"):
                continue
            rows[int(row["epoch"])] = row
    columns = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            try:
                number = float(value)
            except (TypeError, ValueError):  # "NA" for a quantity not logged that epoch
                continue
            columns.setdefault(key, []).append(number)
    return columns


def plot_curves(run_dir, path=None):
    """Draws every logged quantity against the epoch into curves.png; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(run_dir)
    keys = [k for k in history if k != "epoch" and not k.startswith("val_")]
    if not keys:
        return None
    epochs = [e + 1 for e in history["epoch"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        if len(history[key]) != len(epochs):
            continue
        ax.plot(epochs, history[key], marker="o", label="train")
        if len(history.get("val_" + key, [])) == len(epochs):
            ax.plot(epochs, history["val_" + key], marker="o", label="val")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    path = path or os.path.join(run_dir, "curves.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_metrics(run_dir, metrics):
    """Writes metrics.json and prints it."""
    path = os.path.join(run_dir, "metrics.json")
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return path
