"""The training driver shared by the jobs: callbacks, resume after a kill, curves and metrics.

It trains Keras 3 models and the tf_keras (Keras 2) models of TFMOT quantization-aware training
alike (``callback_classes``). A run directory holds everything a job writes:
    recipe.json    the recipe the run was started with (a rerun with another recipe is refused)
    backup/        the resume state (a killed run restarted with the same command resumes)
    last.keras     the model after the latest epoch (QAT with TFMOT: last.weights.h5)
    history.csv    one row per epoch
    logs/          TensorBoard
    curves.png     training curves, drawn from history.csv
    metrics.json   the evaluation figures

Nothing is lost to a kill or a power loss: every file is written under a temporary name, fsynced
and renamed into place (``keras_mnv2.files.write_file``), so each holds either its old or its
new content. At the end of an epoch the history row is written first, then the model, then the
resume state (the weights file of that epoch, then ``training_metadata.json`` naming it). A kill
anywhere in between resumes from the last state written; history.csv is cut back to the epochs
that state holds, so no epoch is lost or repeated.
"""

import contextlib
import csv
import functools
import json
import math
import numbers
import os
import re
import sys
import types

from keras_mnv2.errors import InputError
from keras_mnv2.files import KILL_AT_ENV  # noqa: F401  (driver.KILL_AT_ENV, for the tests)
from keras_mnv2.files import append_history_row, cut_history
from keras_mnv2.files import kill_point as _kill_point
from keras_mnv2.files import write_file
from keras_mnv2.files import write_text as _write_text
from keras_mnv2.frameworks import framework_of, get_keras
from pipelines.manifest import write_atomic


class RunDirError(InputError):
    """A run directory that cannot be used: not writable, a file, another recipe's, or a broken
    resume state."""


class NoTrainingError(InputError):
    """An epoch that trained zero steps (no usable training images)."""


# The kill points of KILL_AT_ENV (keras_mnv2.files; tests/test_faults.py) here: "batch" (after the
# epoch's 2nd step), or with the new content written under the temporary name and not yet
# renamed: "history", "checkpoint", "state-weights"; or "state" (the weights file renamed, its
# metadata not yet written).


def save_model(model, path, before_rename=None):
    """``model.save(path)`` written whole (``keras_mnv2.files.write_file``): never half a
    model."""
    return write_file(path, model.save, before_rename)


def _save_figure(fig, path, **kwargs):
    return write_file(path, lambda tmp: fig.savefig(tmp, **kwargs))


def _rerun_hint(run_dir):
    command = " ".join(["keras-mnv2", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
    return command


def prepare_run_dir(run_dir, recipe=None):
    """Checks ``run_dir`` before anything is built: a writable folder (made if missing) whose
    ``recipe.json``, if any, holds ``recipe``. Writes recipe.json on the first run.

    Raises ``RunDirError`` naming the problem: a file in the way, a folder that cannot be written,
    or a run of another recipe (the fields that differ, and to use a new --run-dir).
    """
    import dataclasses

    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"run dir {run_dir} is a file, not a folder: give another --run-dir")
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise RunDirError(f"run dir {run_dir} cannot be written ({err.strerror or err}): "
                          "give another --run-dir") from None
    if recipe is None:
        return run_dir
    wanted = json.loads(json.dumps(dataclasses.asdict(recipe)))
    path = os.path.join(run_dir, "recipe.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise RunDirError(f"{path} cannot be read ({err}): remove it if the run's recipe is "
                              "the one given, or give another --run-dir") from None
        differ = [f"{name}: {saved.get(name, '(absent)')!r} in the run, "
                  f"{wanted.get(name, '(absent)')!r} now"
                  for name in sorted(set(saved) | set(wanted))
                  if saved.get(name) != wanted.get(name)]
        if differ:
            raise RunDirError(f"run dir {run_dir} holds a run of another recipe ("
                              + "; ".join(differ) + "): give a new --run-dir to train this one, "
                              "or the run's own settings to resume it")
    else:
        write_atomic(path, json.dumps(wanted, indent=1, sort_keys=True))
    return run_dir


def _optimizer_built(optimizer):
    """Keras 3 optimizers say ``built``; tf_keras ones keep ``_built``."""
    return bool(getattr(optimizer, "built", getattr(optimizer, "_built", False)))


# The callbacks' code, shared by both Keras implementations: ``callback_classes`` makes each a
# subclass of the model's ``Callback`` (Keras 3, or tf_keras for TFMOT's quantization-aware
# models, keras_mnv2.deploy.qat).


class _StopOnNaN:
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


def _diverged(logs):
    """The epoch's mean loss is NaN or infinite: a batch of it diverged (``_StopOnNaN``)."""
    loss = (logs or {}).get("loss")
    return loss is not None and not math.isfinite(float(loss))


class _HistoryLog:
    """history.csv, one row per epoch (``epoch`` then the logged quantities, sorted), rewritten
    whole through a temporary file at each epoch end: a kill leaves the old or the new file."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        append_history_row(self.path, epoch, logs, lambda: _kill_point("history", epoch))


class _AtomicCheckpoint:
    """The model after every epoch, saved through a temporary file and a rename: the whole
    model (``last.keras``), or its weights for a path ending in ``.weights.h5`` (a model whose
    whole file would not load back: TFMOT's quantization-aware ones)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if _diverged(logs):  # keep the last good model, not NaN weights
            return
        before_rename = lambda: _kill_point("checkpoint", epoch)  # noqa: E731
        if self.path.endswith(".weights.h5"):
            write_file(self.path, lambda tmp: self.model.save_weights(tmp, overwrite=True),
                       before_rename)
        else:
            save_model(self.model, self.path, before_rename)


class _ResumeState:
    """What a killed run resumes from, in ``backup_dir``: ``epoch-<n>.weights.h5`` (the weights
    and optimizer state after n epochs) and ``training_metadata.json`` (``{"epoch": n, "weights":
    file}``), each written under a temporary name and renamed; the metadata, renamed last, is the
    commit point. Older weights files are removed after it. ``restore`` (called by ``fit``
    before training) loads it. Reads the state Keras's BackupAndRestore leaves
    (``latest.weights.h5``) too. A state that cannot be read raises ``RunDirError`` saying how
    to resume from the last good model or to start over.
    """

    def __init__(self, backup_dir, run_dir=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.run_dir = run_dir or os.path.dirname(os.path.abspath(backup_dir))
        self.metadata_path = os.path.join(backup_dir, "training_metadata.json")
        self._weights_file = os.path.join(self.run_dir, "last.weights.h5")

    def epochs_done(self):
        """Epochs the saved state holds (0 with none); raises RunDirError for an unreadable one."""
        return self._read()[0]

    def _read(self):
        if not os.path.exists(self.metadata_path):
            return 0, None
        try:
            with open(self.metadata_path) as f:
                metadata = json.load(f)
            epoch = int(metadata["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._broken(self.metadata_path, err) from None
        weights = os.path.join(self.backup_dir, metadata.get("weights", "latest.weights.h5"))
        return epoch, weights

    def _broken(self, path, err):
        last = os.path.join(self.run_dir, "last.keras")
        if not os.path.exists(last) and os.path.exists(self._weights_file):
            last = self._weights_file  # a TFMOT QAT run's
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return RunDirError(
            f"the resume state {path} cannot be read ({reason}). To start over: "
            f"rm -r {self.backup_dir} {os.path.join(self.run_dir, 'history.csv')} and run "
            f"{_rerun_hint(self.run_dir)} again; the last model saved is {last}"
            + ("" if os.path.exists(last) else " (absent)")
            + "; or train into a new --run-dir")

    def restore(self, model):
        """Loads the saved state into ``model`` (its optimizer too) and cuts history.csv back to
        the epochs it holds; returns that number (0 with no state: training starts over)."""
        epoch, weights = self._read()
        if weights is None:
            leftovers = os.path.isdir(self.backup_dir) and [  # not a kill's before the commit
                name for name in os.listdir(self.backup_dir)
                if ".tmp." not in name and not re.fullmatch(r"epoch-\d+\.weights\.h5", name)]
            if leftovers:  # e.g. the TF checkpoint and state.json of an older QAT run
                print(f"{self.backup_dir} holds no resume state this version reads "
                      f"({', '.join(sorted(leftovers))}): training from the start", flush=True)
        else:
            if not os.path.exists(weights):
                raise self._broken(weights, FileNotFoundError("file missing"))
            optimizer = model.optimizer
            if optimizer is not None and not _optimizer_built(optimizer):
                optimizer.build(model.trainable_variables)  # its slots, to be loaded
            try:
                model.load_weights(weights)
            except Exception as err:  # noqa: BLE001 - h5py/zip/shape errors: "unreadable"
                raise self._broken(weights, err) from None
        cut_history(self.run_dir, epoch)
        return epoch

    def on_epoch_end(self, epoch, logs=None):
        if _diverged(logs):  # a rerun resumes from the last good epoch, not from NaN weights
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        path = os.path.join(self.backup_dir, name)
        write_file(path, lambda tmp: self.model.save_weights(tmp, overwrite=True),
                   lambda: _kill_point("state-weights", epoch))
        _kill_point("state", epoch)
        _write_text(self.metadata_path, json.dumps({"epoch": epoch + 1, "batch": 0,
                                                    "weights": name}))
        for entry in os.listdir(self.backup_dir):  # older states, and temporary leftovers
            if entry != name and entry.endswith(".weights.h5"):
                os.remove(os.path.join(self.backup_dir, entry))


class _StepCounter:
    """Counts the training steps of each epoch; an epoch of zero steps raises NoTrainingError
    before anything records it as done (it runs before the history and state callbacks)."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.total = 0
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = 0
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.total += 1
        if self.steps == 2:
            _kill_point("batch", self.epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.steps == 0:
            raise NoTrainingError(
                f"epoch {epoch + 1} trained zero steps: the training data yielded no batch "
                "(every image skipped or none listed; see the skip counts above). Nothing was "
                "recorded as done; fix the data and run the same command again")


@functools.lru_cache(maxsize=None)
def callback_classes(framework="keras"):
    """The driver's callbacks for models of ``framework`` ("keras" or "tf_keras",
    ``keras_mnv2.frameworks``): a namespace of ``StopOnNaN``, ``HistoryLog``,
    ``AtomicCheckpoint``, ``ResumeState`` and ``StepCounter``, each a subclass of that Keras's
    ``Callback``. The same code, files and kill points for both."""
    base = get_keras(framework).callbacks.Callback
    made = {}
    for logic in (_StopOnNaN, _HistoryLog, _AtomicCheckpoint, _ResumeState, _StepCounter):
        name = logic.__name__.lstrip("_")
        made[name] = type(name, (logic, base), {"__doc__": logic.__doc__,
                                                "__module__": __name__})
    return types.SimpleNamespace(**made)


# The Keras 3 ones, by name.
StopOnNaN = callback_classes("keras").StopOnNaN
HistoryLog = callback_classes("keras").HistoryLog
AtomicCheckpoint = callback_classes("keras").AtomicCheckpoint
ResumeState = callback_classes("keras").ResumeState
StepCounter = callback_classes("keras").StepCounter


def callbacks(run_dir, model_file="last.keras", framework="keras"):
    """Progress-independent callbacks every job uses; see the module docstring for the files.
    ``model_file``: the file in ``run_dir`` the model is saved to each epoch (``AtomicCheckpoint``;
    None for none); ``framework``: the Keras the model is built with.

    Order matters at each epoch end: the zero-step check, then history.csv, the model file and
    last the resume state."""
    os.makedirs(run_dir, exist_ok=True)
    classes = callback_classes(framework)
    result = [
        classes.StepCounter(),
        classes.HistoryLog(os.path.join(run_dir, "history.csv")),
        get_keras(framework).callbacks.TensorBoard(os.path.join(run_dir, "logs"),
                                                   write_graph=False, profile_batch=0),
        classes.StopOnNaN(),
    ]
    if model_file:
        result.append(classes.AtomicCheckpoint(os.path.join(run_dir, model_file)))
    result.append(classes.ResumeState(os.path.join(run_dir, "backup"), run_dir))
    return result


def _cache_keras_saving_skipsets():
    """Keras 3's saving code (3.15 here) keeps the attribute skip sets it computes under
    ``saving_attr_skipset_<type>`` but looks them up under ``saving_attr_skiplist_<type>``, so
    every save builds a throwaway Layer for each layer it walks: about a third of the CPU time
    of the two saves at each epoch end (docs/benchmarks.md, "Training step profile"). Stores
    each set where it is looked up (the same set Keras would compute). Does nothing on a Keras
    without these internals, or where the set is already found."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving.saving_lib import get_attr_skipset
    except ImportError:
        return
    for obj_type in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer",
                     "Loss"):
        key = f"saving_attr_skiplist_{obj_type}"
        if global_state.get_global_attribute(key, None) is None:
            with contextlib.suppress(ValueError):  # a type this Keras does not list
                global_state.set_global_attribute(key, get_attr_skipset(obj_type))


def fit(model, train_data, epochs, run_dir, validation_data=None, steps_per_epoch=None,
        verbose="auto", extra_callbacks=(), model_file="last.keras"):
    """``model.fit`` with the shared callbacks; returns the StopOnNaN message or None.

    ``model`` is a Keras 3 or a tf_keras model (TFMOT's quantization-aware ones): the
    callbacks are made for its Keras (``callback_classes``). The compiled optimizer is built
    first, eagerly, under ``model.distribute_strategy``.

    Restarting the same command after a kill continues from the last finished epoch (the
    resume state in ``run_dir/backup``); a finished run is not trained again. An epoch that
    trains zero steps raises ``NoTrainingError`` and is not recorded. ``model_file``: the file
    the model is saved to each epoch, ``last.keras`` (``*.weights.h5``: the weights only; None:
    none, the caller saves the model).
    """
    framework = framework_of(model)
    if model.optimizer is not None and not _optimizer_built(model.optimizer):
        # Slot variables made now, eagerly: made inside the first traced train step they cost
        # ~20x more each, and the step is traced twice (about a minute on 2 cores). Under the
        # model's strategy, so that they are distributed like the weights.
        # (JAX and torch models have no distribute_strategy.)
        strategy = getattr(model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model.optimizer.build(model.trainable_variables)
    if framework == "keras":
        _cache_keras_saving_skipsets()
    classes = callback_classes(framework)
    cbs = callbacks(run_dir, model_file, framework) + list(extra_callbacks)
    done = next(cb for cb in cbs if isinstance(cb, classes.ResumeState)).restore(model)
    if done >= epochs:
        print(f"{run_dir}: all {epochs} epoch(s) already done, nothing to train", flush=True)
    elif done:
        print(f"{run_dir}: resuming after epoch {done} of {epochs}", flush=True)
    model.fit(train_data, epochs=epochs, initial_epoch=min(done, epochs),
              validation_data=validation_data, steps_per_epoch=steps_per_epoch, callbacks=cbs,
              verbose=verbose)
    plot_curves(run_dir)
    nan = next(cb for cb in cbs if isinstance(cb, classes.StopOnNaN))
    return nan.message


def check_fields(recipe, ranges=(), choices=()):
    """Raises InputError naming the first field of ``recipe`` outside what it may hold.

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
            raise InputError(f"{cls}.{name} must be in {interval}, got {value!r}")
    for name, allowed in dict(choices).items():
        value = getattr(recipe, name)
        if value not in allowed:
            raise InputError(f"{cls}.{name} must be one of {', '.join(map(repr, allowed))}, "
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
    _save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def write_metrics(run_dir, metrics):
    """Writes metrics.json (through a temporary file and a rename) and prints it."""
    path = os.path.join(run_dir, "metrics.json")
    write_atomic(path, json.dumps(metrics, indent=2, sort_keys=True))
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return path
