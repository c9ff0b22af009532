"""Where a training step of the COCO detection job goes: ``fit`` beside the isolated step.

In one process, on the embedded COCO job's recipe (``pipelines.jobs.detection.EMBEDDED``) and
its model, optimizer and loss:

1. the input pipeline alone: the job's own training dataset (``detection.train_dataset``)
   iterated without the model, one epoch as warm-up (decoding into its cache), then timed
   per batch, wall and process CPU time (what the pipeline takes from the cores the training
   step also needs);
2. the isolated step: the model's compiled train function (the graph ``fit`` runs) on one
   fixed batch of that input, held in memory, repeated;
3. ``fit`` through the driver (``pipelines.jobs.driver.fit``: the job's callbacks, checkpoints
   and resume state every epoch) on the job's pipeline, with the first epoch as warm-up
   (tracing, the cache's fill). Per step: the train function's call (the batch's fetch from
   the pipeline happens inside it, so any input wait is counted there), the driver's
   callbacks (each of their hooks timed), and the rest of Keras's loop (progress bar, logs);
   per epoch, the callbacks' epoch-end work (saving the model and the resume state), shown
   per step;
4. the isolated step again, to show how the machine's load drifted meanwhile.

Figures are milliseconds: the median and the interquartile range (25th-75th percentile) over
the steps. ``fit``'s wall time per step over the measured epochs, epoch ends included, is what
a training run pays; the goal is for it to stay within 5% of the isolated step.

    python -m benchmarks.train_profile                      # the embedded recipe, 2 epochs
    python -m benchmarks.train_profile --steps 20 --isolated-steps 10
    python -m benchmarks.train_profile --train-images 16 --val-images 4 --input-size 64 \\
        --batch-size 4 --isolated-steps 3                   # seconds: a smoke run
"""

import argparse
import dataclasses
import math
import os
import statistics
import tempfile
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

CALLBACK_HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
                  "on_train_batch_begin", "on_train_batch_end")


@dataclasses.dataclass(frozen=True)
class Spread:
    """Milliseconds: median, interquartile range and extremes of ``count`` values."""

    median: float
    q25: float
    q75: float
    low: float
    high: float
    count: int


def spread(seconds):
    """The Spread, in ms, of a list of durations in seconds."""
    ms = [1e3 * s for s in seconds]
    if not ms:
        raise ValueError("no values to summarize")
    q25, _, q75 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    return Spread(statistics.median(ms), q25, q75, min(ms), max(ms), len(ms))


class CallbackTimes:
    """Wraps the hooks of callbacks so that the time each takes is added up, per training step
    (batch hooks) or per epoch (epoch hooks). ``step`` is advanced by the caller."""

    def __init__(self):
        self.per_step = {}  # step index -> seconds in batch hooks
        self.per_epoch = {}  # epoch -> seconds in epoch hooks
        self.by_name = {}  # (callback class name, "batch" or "epoch") -> seconds after epoch 0
        self.step = 0
        self.epoch = 0

    def wrap(self, callback):
        name = type(callback).__name__
        for hook in CALLBACK_HOOKS:
            setattr(callback, hook, self._timed(getattr(callback, hook), name, hook))
        return callback

    def _timed(self, method, name, hook):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                kind = "batch" if "batch" in hook else "epoch"
                if self.epoch >= 1:  # after the warm-up epoch
                    self.by_name[name, kind] = self.by_name.get((name, kind), 0.0) + seconds
                if "batch" in hook:
                    self.per_step[self.step] = self.per_step.get(self.step, 0.0) + seconds
                elif "epoch" in hook:
                    self.per_epoch[self.epoch] = self.per_epoch.get(self.epoch, 0.0) + seconds

        return timed


def _step_clock(callback_times):
    """A Keras callback, placed after the driver's, that stamps each step's begin and end and
    each epoch's begin and end; it moves ``callback_times`` on to the next step and epoch."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            # (epoch, wall, process CPU) at each batch's begin, (epoch, wall) at its end,
            # (epoch, wall, CPU at the epoch's begin, wall, CPU at its end) for each epoch
            self.begins, self.ends, self.epochs = [], [], []
            self._epoch_start = None

        def on_epoch_begin(self, epoch, logs=None):
            callback_times.epoch = epoch
            self._epoch_start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((epoch, *self._epoch_start, time.perf_counter(),
                                time.process_time()))

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append((callback_times.epoch, time.perf_counter(), time.process_time()))

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((callback_times.epoch, time.perf_counter()))
            callback_times.step += 1

    return StepClock()


class TrainFunctionClock:
    """Wraps ``model.train_function`` (the compiled step ``fit`` calls) and records each call's
    duration while ``recording`` holds a list."""

    def __init__(self, model):
        model.make_train_function()
        self.function = model.train_function
        self.recording = None
        model.train_function = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.function(*args, **kwargs)
        if self.recording is not None:
            self.recording.append(time.perf_counter() - start)
        return result


def input_only(dataset, warmup, batches):
    """Iterates ``dataset`` alone: ``warmup`` batches, then ``batches`` timed; returns (wall
    seconds per batch, process CPU seconds per batch over the timed ones)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    walls = []
    cpu_start = time.process_time()
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        walls.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) / batches
    return walls, cpu


def isolated_steps(train_function, batch, warmup, steps):
    """The model's compiled train function (the one ``fit`` calls, same graph) on one fixed
    batch held in memory: ``warmup`` calls, then ``steps`` timed; returns (wall seconds, process
    CPU seconds) of each. Each call ends with the loss read back, as ``fit``'s callbacks do."""
    import tensorflow as tf

    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    walls, cpus = [], []
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        logs = train_function(iterator)
        float(logs["loss"])
        if i >= warmup:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu_start)
    if not math.isfinite(float(logs["loss"])):
        raise FloatingPointError("the isolated step's loss is not finite")
    return walls, cpus


@dataclasses.dataclass
class Profile:
    """What ``profile`` measured; each row of ``table_lines`` is a Spread (ms)."""

    recipe: object
    steps_per_epoch: int
    measured_steps: int
    rows: dict  # label -> Spread of wall times
    cpu_rows: dict  # label -> Spread of the process's CPU time (all its threads)
    input_cpu_ms: float  # process CPU ms per batch of the input pipeline alone
    callbacks_by_name: dict  # callback -> (ms a step in batch hooks, s an epoch in the others)


def profile(recipe, data_root, train_images, val_images, steps_per_epoch=None, epochs=2,
            isolated=30, verbose=0):
    """Runs the four measurements of the module docstring; returns a Profile."""
    import keras

    from benchmarks.peer_bench import embedded_coco
    from pipelines.jobs import detection, driver
    from pipelines.jobs.training import steps_per_epoch as job_steps_per_epoch

    if epochs < 2:
        raise ValueError("epochs must be >= 2: the first is a warm-up")
    root = embedded_coco(train_images, val_images, data_root)
    data = detection.load_data(recipe, coco_dir=root)
    steps = steps_per_epoch or job_steps_per_epoch(recipe, data.num_train)
    keras.utils.set_random_seed(recipe.seed)
    model = detection.build_model(recipe, data.num_classes)
    model.compile(optimizer=detection.make_optimizer(recipe, steps), loss=detection.losses(recipe))
    model.optimizer.build(model.trainable_variables)  # as driver.fit does, before tracing
    rows = {}

    # 1. the input pipeline alone
    walls, cpu = input_only(detection.train_dataset(data.train, recipe, model.anchors),
                            warmup=steps, batches=steps * (epochs - 1))
    rows["input pipeline alone, per batch"] = spread(walls)

    # 2. the isolated step
    batch = next(iter(detection.train_dataset(data.train, recipe, model.anchors)))
    clock = TrainFunctionClock(model)
    walls, cpus = isolated_steps(clock.function, batch, 3, isolated)
    rows["isolated step (train function), before fit"] = spread(walls)
    cpu_rows = {"isolated step, before fit": spread(cpus)}

    # 3. fit through the driver
    callback_times = CallbackTimes()
    step_clock = _step_clock(callback_times)
    job_callbacks = driver.callbacks

    def timed_callbacks(*args, **kwargs):
        return [callback_times.wrap(cb) for cb in job_callbacks(*args, **kwargs)]

    calls = []
    clock.recording = calls
    with tempfile.TemporaryDirectory() as run_dir, \
            mock.patch.object(driver, "callbacks", timed_callbacks):
        nan = driver.fit(model, detection.train_dataset(data.train, recipe, model.anchors),
                         epochs, run_dir, steps_per_epoch=steps, verbose=verbose,
                         extra_callbacks=[step_clock])
    clock.recording = None
    if nan:
        raise FloatingPointError(nan)
    measured = [i for i, begin in enumerate(step_clock.begins) if begin[0] >= 1]
    begins, ends = step_clock.begins, step_clock.ends
    same_epoch = [i for i in measured[:-1] if begins[i + 1][0] == begins[i][0]]
    intervals = [begins[i + 1][1] - begins[i][1] for i in same_epoch]
    cpu_intervals = [begins[i + 1][2] - begins[i][2] for i in same_epoch]
    gaps = [begins[i + 1][1] - ends[i][1] for i in same_epoch]
    epochs_after = [e for e in step_clock.epochs if e[0] >= 1]
    epoch_walls = [(t1 - t0) / steps for _, t0, _, t1, _ in epochs_after]
    epoch_cpus = [(c1 - c0) / steps for _, _, c0, _, c1 in epochs_after]
    epoch_hooks = [callback_times.per_epoch.get(e[0], 0.0) / steps for e in epochs_after]
    rows["fit, wall per step (epoch ends included)"] = spread(epoch_walls)
    rows["fit, batch begin to next batch begin"] = spread(intervals)
    rows["fit, train function (input fetch + step)"] = spread([calls[i] for i in measured])
    rows["fit, gap: batch end to next batch begin"] = spread(gaps)
    rows["fit, driver callbacks, batch hooks"] = spread(
        [callback_times.per_step.get(i, 0.0) for i in measured])
    rows["fit, driver callbacks, epoch ends per step"] = spread(epoch_hooks)
    cpu_rows["fit, per step (epoch ends included)"] = spread(epoch_cpus)
    cpu_rows["fit, batch begin to next batch begin"] = spread(cpu_intervals)

    # 4. the isolated step again
    walls, cpus = isolated_steps(clock.function, batch, 1, isolated)
    rows["isolated step (train function), after fit"] = spread(walls)
    cpu_rows["isolated step, after fit"] = spread(cpus)
    by_name = {name: (1e3 * callback_times.by_name.get((name, "batch"), 0.0) / len(measured),
                      callback_times.by_name.get((name, "epoch"), 0.0) / (epochs - 1))
               for name in sorted({name for name, _ in callback_times.by_name})}
    return Profile(recipe, steps, len(measured), rows, cpu_rows, 1e3 * cpu, by_name)


def _row(label, s):
    return (f"{label:<46} {s.median:>8.1f} {s.q25:>8.1f} {s.q75:>8.1f} {s.low:>8.1f} "
            f"{s.high:>8.1f} {s.count:>5}")


def table_lines(result):
    """The breakdown table (ms): wall times, then the process's CPU time (all its threads: the
    training step's and the input pipeline's), which a loaded machine disturbs less."""
    recipe = result.recipe
    header = (f"{'ms per step, wall':<46} {'median':>8} {'q25':>8} {'q75':>8} {'min':>8} "
              f"{'max':>8} {'n':>5}")
    lines = [f"SSDLite alpha {recipe.alpha}, {recipe.input_size} px, batch {recipe.batch_size}, "
             f"{result.steps_per_epoch} steps an epoch, {result.measured_steps} measured",
             header, "-" * len(header)]
    lines += [_row(label, s) for label, s in result.rows.items()]
    lines += ["", "ms per step, process CPU".ljust(len(header)), "-" * len(header)]
    lines += [_row(label, s) for label, s in result.cpu_rows.items()]
    lines.append(_row("input pipeline alone, per batch",
                      spread([result.input_cpu_ms / 1e3])))
    rows, cpu_rows = result.rows, result.cpu_rows
    before = rows["isolated step (train function), before fit"]
    after = rows["isolated step (train function), after fit"]
    isolated = statistics.mean([before.median, after.median])
    fit = rows["fit, wall per step (epoch ends included)"].median
    steady = rows["fit, batch begin to next batch begin"]
    isolated_cpu = statistics.mean([cpu_rows["isolated step, before fit"].median,
                                    cpu_rows["isolated step, after fit"].median])
    fit_cpu = cpu_rows["fit, per step (epoch ends included)"].median
    lines.append("")
    lines.append("driver callbacks, ms a step in batch hooks / s an epoch in the others: "
                 + ", ".join(f"{name} {ms:.2f} / {s:.2f}"
                             for name, (ms, s) in result.callbacks_by_name.items()))
    lines.append(f"fit / isolated step: {fit / isolated:.3f} (fit's wall per step over the mean "
                 f"of the isolated medians); between batches, medians "
                 f"{steady.median / isolated:.3f}, minima "
                 f"{steady.low / min(before.low, after.low):.3f}; process CPU "
                 f"{fit_cpu / isolated_cpu:.3f}")
    return lines


def main(argv=None):
    from pipelines.jobs import detection

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=detection.EMBEDDED.input_size)
    parser.add_argument("--batch-size", type=int, default=detection.EMBEDDED.batch_size)
    parser.add_argument("--steps", type=int, default=None,
                        help="fit's steps an epoch (default: the job's, one pass over the train "
                             "split; fewer keep decoding images, as the cache fills only after "
                             "a whole pass)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="fit's epochs; the first is a warm-up (default 2)")
    parser.add_argument("--isolated-steps", type=int, default=30,
                        help="timed calls of the isolated step, before fit and again after")
    parser.add_argument("--train-images", type=int, default=detection.SYNTHETIC["num_train"])
    parser.add_argument("--val-images", type=int, default=detection.SYNTHETIC["num_val"])
    parser.add_argument("--data-root", default=None,
                        help="where the embedded dataset is (generated if absent)")
    args = parser.parse_args(argv)
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=args.input_size,
                                 batch_size=args.batch_size)
    detection.check_recipe(recipe)
    result = profile(recipe, args.data_root, args.train_images, args.val_images,
                     steps_per_epoch=args.steps, epochs=args.epochs,
                     isolated=args.isolated_steps)
    print("\n".join(table_lines(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
