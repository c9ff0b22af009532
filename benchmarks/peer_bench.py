"""``make bench`` section "peer": our SSDLite beside a keras-cv detector, trained for
the same wall time on the same embedded COCO.

Both detectors start from random weights (keras-cv's presets come from Kaggle, which a run here
cannot reach). SSDLite-MobileNetV2 trains with the embedded recipe through
``pipelines.jobs.detection.run`` (or is read from a finished run, ``--ssdlite-run``); keras-cv's
YOLOV8Detector on a MobileNetV3-Small backbone (given by its arguments, as in
``benchmarks/keras_cv_probe.py``) then trains on the same train split, at the same input size,
batch size, flip augmentation and Adam learning rate, for SSDLite's measured ``fit`` time after
its first step (``--wall-seconds`` gives both the same budget instead; each model's first step,
tracing included, is timed apart, ``TrainClock``). Its learning rate follows the recipe's
warm-up and cosine decay over the time budget rather than over a step count it cannot know.
Both are evaluated with the same pycocotools evaluation (``pipelines.data.coco_eval``) on the
same val split, each through its own post-processing (SSDLite: class-wise NMS; YOLOV8:
keras-cv's class-agnostic NonMaxSuppression), with the same score threshold, NMS IoU and
detection cap. MAdds: ``keras_mnv2.profile`` on both (multiply-adds of Conv2D, DepthwiseConv2D,
Dense layers, nested backbones included). TFLite int8: both raw heads (box regressions and class
scores, no box decoding and no NMS: YOLOV8's decoder lives outside its functional graph, in
``predict_step``), converted by ``keras_mnv2.deploy.export.convert(mode="int8", output="raw")``
(the converter's post-training quantization) and timed together by ``benchmarks.timing``.

Equal latency: int8 speed differs between the two families from one CPU to another (YOLOV8's
dense 3x3 convolutions gain more from AVX-512 VNNI than SSDLite's depthwise ones), so the bench
measures, on the machine it runs on, the int8 latency of untrained SSDLite models at larger
widths (at the recipe's input size) and larger input sizes (at its width), picks the nearest
below and the nearest above YOLOV8's, and trains each for the same time as the others: as many
epochs of the same recipe as its measured step time allows in the baseline's time, stopped at
the time budget in any case. ``--plot`` draws AP50 and AP against int8 latency for both
families.

    python -m benchmarks.peer_bench --plot peer.png     # the full comparison, 4 detectors
    python -m benchmarks.peer_bench --no-equal-latency  # SSDLite and YOLOV8 only
    python -m benchmarks.peer_bench --wall-seconds 5 --train-images 64 --input-size 96
    python -m benchmarks.peer_bench --step-times 30     # ms a training step, each model
"""

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

NAMES = ("SSDLite-MobileNetV2 (keras_mnv2)", "YOLOV8-MobileNetV3S (keras-cv)")


def _time_budget_callback():
    import keras

    class TrainClock(keras.callbacks.Callback):
        """Times ``fit`` and counts its steps. The first step (graph tracing, the shuffle buffer's
        fill, the first reads into the cache) is timed apart, as ``first_step_s``: on a loaded
        machine it can take minutes, and a budget that counted it would give the model that
        traces longer less time to learn. ``seconds`` is the time after the first step. With
        ``budget_s``, stops training after the step that brings ``seconds`` to it; with
        ``learning_rate``, sets the optimizer's rate before each step from the elapsed fraction
        of the budget (0 for the first step): linear warm-up over ``warmup`` of it, then cosine
        decay to ``alpha`` times the peak (the shape of the recipes' step schedule, over time)."""

        def __init__(self, budget_s=None, learning_rate=None, warmup=0.0, alpha=0.01):
            super().__init__()
            if learning_rate is not None and not budget_s:
                raise ValueError("a time-based learning rate needs a time budget")
            self.budget_s, self.learning_rate = budget_s, learning_rate
            self.warmup, self.alpha = warmup, alpha
            self.seconds, self.first_step_s, self.steps, self.schedule = 0.0, 0.0, 0, None
            self.loss = float("nan")  # the training loss Keras reported after the last step
            self._start = self._steady = None

        STEPS = 100_000  # the budget's resolution: a fraction of it is read as a step

        def rate(self, fraction):
            """The jobs' warm-up + cosine schedule (``training.cosine_schedule``), read at
            ``fraction`` of the budget instead of a step count."""
            if self.schedule is None:
                from pipelines.jobs.training import cosine_schedule

                self.schedule = cosine_schedule(self.learning_rate, self.STEPS,
                                                round(self.warmup * self.STEPS), alpha=self.alpha)
            return float(self.schedule(min(max(fraction, 0.0), 1.0) * self.STEPS))

        def elapsed(self):
            """Seconds since the first step ended (0 until it has)."""
            return 0.0 if self._steady is None else time.perf_counter() - self._steady

        def on_train_begin(self, logs=None):
            self._start, self._steady = time.perf_counter(), None

        def on_train_batch_begin(self, batch, logs=None):
            if self.learning_rate is not None:
                self.model.optimizer.learning_rate = self.rate(self.elapsed() / self.budget_s)

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
            if self._steady is None:
                self._steady = time.perf_counter()
                self.first_step_s = self._steady - self._start
            if self.budget_s and self.elapsed() >= self.budget_s:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.seconds = self.elapsed()

    return TrainClock


@dataclasses.dataclass
class PeerRow:
    name: str
    params: int
    madds: int
    train_seconds: float  # after the first step (see TrainClock)
    first_step_s: float  # the first step: tracing, shuffle-buffer fill
    steps: int
    ap50: float
    ap: float
    tflite_bytes: int = 0
    int8_wall_ms: float = float("nan")
    int8_cpu_ms: float = float("nan")
    loss: float = float("nan")  # the last training step's loss


def data_root_for(train_images, val_images):
    """The embedded dataset ``make train-coco`` uses at the default sizes, else one of its own
    (a different manifest would make ``generate`` wipe and rewrite the shared one)."""
    from pipelines.jobs.detection import SYNTHETIC

    if (train_images, val_images) == (SYNTHETIC["num_train"], SYNTHETIC["num_val"]):
        return "data/synthetic_coco"
    return f"data/synthetic_coco_peer_{train_images}_{val_images}"


def embedded_coco(train_images, val_images, data_root=None):
    """The embedded synthetic COCO at these sizes, generated if not there; returns its root."""
    from pipelines.jobs.detection import SYNTHETIC
    from pipelines.synthetic import coco as synthetic_coco

    root = data_root or data_root_for(train_images, val_images)
    synthetic_coco.generate(root, **dict(SYNTHETIC, num_train=train_images, num_val=val_images))
    return root


def import_keras_cv():
    """keras_cv, imported so that it runs on Keras 3 in any process.

    keras-cv picks Keras 2 or 3 once, at import, from ``tensorflow.keras``; importing TensorFlow
    Model Optimization (QAT, export) sets ``TF_USE_LEGACY_KERAS=1``, after which
    ``tensorflow.keras`` is tf_keras and keras-cv's import fails ("module
    'keras_cv.src.backend.keras2' has no attribute 'saving'"). ``tensorflow.keras`` is therefore
    Keras 3 for the length of the import."""
    import sys
    from unittest import mock

    if "keras_cv" in sys.modules:
        return sys.modules["keras_cv"]
    import keras
    import tensorflow as tf

    with mock.patch.object(tf, "keras", keras):
        import keras_cv
    return keras_cv


def yolo_model(num_classes, recipe):
    """keras-cv's YOLOV8Detector on MobileNetV3-Small, boxes in ``rel_yxyx`` (the reader's
    normalized yxyx), its decoder given the recipe's score threshold, NMS IoU and cap."""
    keras_cv = import_keras_cv()
    from benchmarks.keras_cv_probe import SMALL

    size = recipe.input_size
    backbone = keras_cv.models.MobileNetV3Backbone(include_rescaling=False,
                                                   input_shape=(size, size, 3), **SMALL)
    decoder = keras_cv.layers.NonMaxSuppression(
        bounding_box_format="rel_yxyx", from_logits=False,
        confidence_threshold=recipe.score_threshold, iou_threshold=recipe.nms_iou,
        max_detections=recipe.max_detections)
    model = keras_cv.models.YOLOV8Detector(num_classes=num_classes, bounding_box_format="rel_yxyx",
                                           backbone=backbone, fpn_depth=1,
                                           prediction_decoder=decoder)
    set_bn_momentum(model, recipe.bn_momentum)
    return model


def compiled_yolo(num_classes, recipe):
    """``yolo_model`` compiled as the bench trains it: Adam at the recipe's rate (global clipnorm
    10), binary cross-entropy classes, CIoU boxes, the optimizer built eagerly (see driver.fit).
    Train it inside ``without_constant_folding``."""
    import keras

    model = yolo_model(num_classes, recipe)
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate, global_clipnorm=10.0),
                  classification_loss="binary_crossentropy", box_loss="ciou")
    model.optimizer.build(model.trainable_variables)
    return model


@contextlib.contextmanager
def without_constant_folding():
    """Grappler's constant folding off for the ``tf.function`` graphs made inside.

    keras-cv's YOLOV8 pads the ground truth with boxes at -1 (-input_size pixels once absolute)
    and its task-aligned assigner takes their CIoU with every prediction. Eagerly that CIoU is
    finite (the box's height is ``(y_max - y_min) + epsilon``, 1e-7); in a ``tf.function`` with
    constant folding it is NaN, and NaN * 0 in the assigner makes every class target, and the
    loss, NaN from the first traced step
    (``tests/test_benchmarks.py::test_peer_constant_folding_makes_yolo_ciou_nan``). The reading
    that fits (grappler's rewrite not traced): folding moves the constant, ``(y_max + epsilon) -
    y_min``, where float32 loses 1e-7 beside 160, so width/height is 0/0. With folding off, the
    CIoU equals the eager one's and the traced loss is finite, at about 0.4 s a step against
    eager's 3 s (160 px, batch 32, the full bench)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options().get("constant_folding", True)
    tf.config.optimizer.set_experimental_options({"constant_folding": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"constant_folding": before})


def set_bn_momentum(model, momentum):
    """Gives every BatchNormalization layer of ``model`` the recipe's ``momentum`` (returns how
    many). keras-cv's MobileNetV3 backbone fixes 0.999 (its YOLOV8 layers 0.97): after the few
    hundred steps the bench trains, 0.999's moving statistics are still mostly their initial
    (0, 1), so inference-mode features, and with them every box, are wrong (AP50 0.000) while the
    training loss falls. SSDLite trains with the recipe's momentum; so does YOLOV8 now."""
    import keras

    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def yolo_train_dataset(source, recipe, max_boxes):
    """SSDLite's "flip" training input (cache, shuffle, flip, resize to [-1, 1]) with keras-cv's
    targets: boxes [B, max_boxes, 4] rel_yxyx and classes [B, max_boxes] (0..C-1), padded with
    -1; crowd regions dropped (SSDLite's matching ignores them too)."""
    import tensorflow as tf

    from pipelines.data import augment

    size = recipe.input_size
    ds = source.cache() if recipe.cache else source
    ds = ds.shuffle(1024, seed=recipe.seed, reshuffle_each_iteration=True)

    def prepare(element):
        element = augment.eval_preprocess(augment.random_flip(element), size)
        keep = tf.logical_not(element["is_crowd"])
        return element["image"], {
            "boxes": tf.boolean_mask(element["boxes"], keep),
            # keras-cv's classes are 0..C-1; the reader's labels 1..C (0 is SSD's background)
            "classes": tf.cast(tf.boolean_mask(element["labels"], keep) - 1, tf.float32),
        }

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).repeat()
    return ds.padded_batch(
        recipe.batch_size,
        padded_shapes=([size, size, 3], {"boxes": [max_boxes, 4], "classes": [max_boxes]}),
        padding_values=(0.0, {"boxes": -1.0, "classes": -1.0}),
        drop_remainder=True,
    ).prefetch(tf.data.AUTOTUNE)


def yolo_detections(model, dataset):
    """Per-image detection dicts (normalized yxyx boxes clipped to the image) from keras-cv's
    own ``predict`` (raw head, box decoding, NonMaxSuppression)."""
    detections = []
    for images, image_ids in dataset:
        out = model.predict(images.numpy(), verbose=0)
        for i, image_id in enumerate(image_ids.numpy()):
            n = int(out["num_detections"][i])
            detections.append({
                "image_id": int(image_id),
                "boxes": np.clip(out["boxes"][i, :n], 0.0, 1.0),
                "scores": out["confidence"][i, :n],
                "classes": out["classes"][i, :n] + 1,  # back to the reader's 1..C
            })
    return detections


def calibration_images(source, recipe, count):
    """``count`` train images resized and scaled as both models see them."""
    from pipelines.data import augment

    images = [augment.eval_preprocess(e, recipe.input_size)["image"].numpy()
              for e in source.take(count)]
    return np.stack(images).astype("float32")


def train_ssdlite(root, recipe, budget_s, run_dir, verbose):
    """Trains SSDLite with ``detection.run``; returns (metrics, the trained model, clock)."""
    import keras

    from pipelines.jobs import detection

    clock = _time_budget_callback()(budget_s=budget_s)
    metrics = detection.run(coco_dir=str(root), run_dir=run_dir, recipe=recipe, verbose=verbose,
                            extra_callbacks=[clock])
    model = keras.saving.load_model(os.path.join(run_dir, "last.keras"))
    return metrics, model, clock


def read_ssdlite_run(run_dir):
    """(metrics, model, recipe) of a finished ``keras-mnv2 train coco`` run directory."""
    import keras

    from pipelines.jobs.detection import CocoRecipe

    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ssdlite-run {run_dir}: no metrics.json (not a finished run)")
    with open(path) as f:
        metrics = json.load(f)
    for key in ("AP50", "AP", "train_seconds", "recipe", "dataset"):
        if key not in metrics:
            raise ValueError(f"{path}: no {key!r} (not a COCO detection run's metrics)")
    model_path = os.path.join(run_dir, "last.keras")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"--ssdlite-run {run_dir}: no last.keras")
    return metrics, keras.saving.load_model(model_path), CocoRecipe(**metrics["recipe"])


# The SSDLite sizes the equal-latency rows are chosen from: wider at the recipe's input size, or
# larger inputs at the recipe's width (the exported graph is the same network either way).
WIDTHS = (0.5, 0.75, 1.0, 1.4)
SIZES = (192, 224, 256, 320, 384)


def ssdlite_candidates(alpha, input_size, widths=WIDTHS, sizes=SIZES):
    """(alpha, input_size) pairs larger than the recipe's: each width of ``widths`` above
    ``alpha`` at ``input_size``, then each size of ``sizes`` above ``input_size`` at ``alpha``."""
    return ([(a, input_size) for a in widths if a > alpha]
            + [(alpha, s) for s in sizes if s > input_size])


def candidate_latencies(candidates, num_classes, calibration, repeats=50):
    """int8 ms (process CPU, 1 thread) of the raw heads of untrained SSDLite models at each
    (alpha, input_size) of ``candidates``, converted and timed as the peer rows are;
    ``calibration``: images in [-1, 1] at any size (resized to each input). Untrained weights
    stand in for trained ones: a raw int8 graph (no NMS) does the same work whatever its values
    (a trained and an untrained file at width 0.35, 160 px timed alike)."""
    import keras
    import tensorflow as tf

    from benchmarks.timing import tflite_timings
    from keras_mnv2.deploy import export
    from keras_mnv2.detection.ssdlite import SSDLite

    contents, inputs = {}, {}
    for alpha, size in candidates:
        keras.utils.set_random_seed(0)
        model = SSDLite(num_classes, alpha=alpha, input_size=size)
        samples = tf.image.resize(calibration, (size, size)).numpy()
        contents[(alpha, size)] = export.convert(model, mode="int8", representative_data=samples,
                                                 output="raw")
        inputs[(alpha, size)] = samples[:1]
    timings = tflite_timings(contents, threads=1, repeats=repeats, rounds=5, inputs=inputs)
    return {key: timing.cpu_ms for key, timing in timings.items()}


def bracket(latencies, target_ms):
    """The keys of ``latencies`` ({key: ms}) nearest ``target_ms`` from below and from above
    (one of them alone where nothing lies on the other side), fastest first."""
    below = [k for k, ms in latencies.items() if ms <= target_ms]
    above = [k for k, ms in latencies.items() if ms > target_ms]
    chosen = []
    if below:
        chosen.append(max(below, key=latencies.get))
    if above:
        chosen.append(min(above, key=latencies.get))
    return chosen


def equal_time_epochs(base_steps, base_ms, variant_ms, steps_per_epoch):
    """Epochs of a variant whose steps take ``variant_ms`` so that it makes as many steps as the
    baseline's ``base_steps`` take at ``base_ms`` (the same training time; at least 1)."""
    if base_ms <= 0 or variant_ms <= 0:
        raise ValueError(f"step times must be > 0, got {base_ms} and {variant_ms}")
    return max(1, round(base_steps * base_ms / variant_ms / steps_per_epoch))


def variant_name(alpha, input_size):
    return f"SSDLite-MobileNetV2 {alpha:g}, {input_size} px"


def plot_latency(rows, path, title=None):
    """AP50 and AP against int8 ms (two panels), one line a detector family (rows whose names
    start alike: SSDLite, YOLOV8), written to ``path`` (PNG) through a temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_mnv2.files import write_bytes

    families = {}
    for row in rows.values():
        families.setdefault(row.name.split("-")[0], []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, ("ap50", "ap")):
        for (family, members), marker in zip(families.items(), "os^D"):
            members = sorted(members, key=lambda r: r.int8_cpu_ms)
            ax.plot([r.int8_cpu_ms for r in members], [getattr(r, metric) for r in members],
                    marker=marker, label=family)
            for r in members:
                label = r.name.split(" ", 1)[1] if " " in r.name else r.name
                ax.annotate(label.replace("(keras_mnv2)", "").replace("(keras-cv)", "").strip()
                            or r.name, (r.int8_cpu_ms, getattr(r, metric)), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        ax.set_xlabel("int8 ms (1 thread, XNNPACK)")
        ax.set_ylabel({"ap50": "AP50", "ap": "AP"}[metric])
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return path


def peer_bench(wall_seconds=None, train_images=2000, val_images=250, input_size=160,
               ssdlite_run=None, data_root=None, repeats=100, calibration=100, verbose=2,
               equal_latency=True, candidates=None, plot=None):
    """Trains (or reads) SSDLite, trains YOLOV8 for the same time, then (``equal_latency``)
    SSDLite at the sizes whose int8 latency brackets YOLOV8's, each for the same time; prints
    the table, and with ``plot`` draws AP50 and AP against int8 latency there (PNG). Returns
    ({name: PeerRow}, notes). ``candidates``: the (alpha, input_size) pairs to choose the
    equal-latency sizes from (default ``ssdlite_candidates`` of the recipe)."""
    import keras

    from keras_mnv2 import profile
    from keras_mnv2.deploy import export
    from pipelines.data import coco, coco_eval
    from pipelines.jobs import detection

    if wall_seconds is not None and wall_seconds <= 0:
        raise ValueError(f"wall_seconds must be > 0, got {wall_seconds}")
    if train_images < 1 or val_images < 1:
        raise ValueError(f"train_images and val_images must be >= 1, got {train_images}, "
                         f"{val_images}")
    print("\n== Peer detector: SSDLite vs keras-cv YOLOV8, same data, same wall "
          "time ==", flush=True)
    start = time.time()
    keras_cv = import_keras_cv()  # timed: its import is a cost of using it

    print(f"import keras_cv {keras_cv.__version__}: {time.time() - start:.1f} s", flush=True)
    notes = []
    work = tempfile.mkdtemp(prefix="peer_bench_")
    try:
        if ssdlite_run is not None:
            ssd_metrics, ssd_model, recipe = read_ssdlite_run(ssdlite_run)
            root = ssd_metrics["dataset"]
            ssd_seconds, ssd_first, ssd_steps = float(ssd_metrics["train_seconds"]), np.nan, None
            ssd_loss = np.nan
            notes.append(f"SSDLite read from {ssdlite_run} (its train_seconds: data loading and "
                         "model building included); its dataset and input size are used")
        else:
            recipe = dataclasses.replace(detection.EMBEDDED, input_size=input_size)
            root = embedded_coco(train_images, val_images, data_root)
            ssd_metrics, ssd_model, clock = train_ssdlite(
                root, recipe, wall_seconds, os.path.join(work, "ssdlite"), verbose)
            ssd_seconds, ssd_first, ssd_steps = clock.seconds, clock.first_step_s, clock.steps
            ssd_loss = clock.loss
        budget = wall_seconds if wall_seconds is not None else ssd_seconds
        if wall_seconds is not None and ssdlite_run is None:
            notes.append(f"--wall-seconds {wall_seconds:g}: SSDLite stopped at the budget on its "
                         f"{recipe.epochs}-epoch step schedule (its learning rate not decayed)")

        train = coco.load_coco(root, "train")
        val = coco.load_coco(root, "val")
        train_source = coco.coco_dataset(train, size_mismatch=recipe.size_mismatch)
        val_source = coco.coco_dataset(val, size_mismatch=recipe.size_mismatch)
        max_boxes = max(1, int(np.max(np.diff(train.box_starts))))
        steps_per_epoch = max(1, train.num_images // recipe.batch_size)

        keras.utils.set_random_seed(recipe.seed)
        yolo = compiled_yolo(train.num_classes, recipe)
        clock = _time_budget_callback()(
            budget_s=budget, learning_rate=recipe.learning_rate,
            warmup=recipe.warmup_epochs / recipe.epochs)
        print(f"YOLOV8: training for {budget:.1f} s after its first step (SSDLite's "
              f"{'fit time after its first step' if wall_seconds is None else 'budget'})",
              flush=True)
        with without_constant_folding():  # else its traced loss is NaN (see there)
            yolo.fit(yolo_train_dataset(train_source, recipe, max_boxes), epochs=10**6,
                     steps_per_epoch=steps_per_epoch, callbacks=[clock], verbose=verbose)
        yolo_dets = yolo_detections(yolo, detection.eval_dataset(val_source, recipe))
        yolo_stats = coco_eval.coco_evaluate(val.coco, yolo_dets, val.label_to_category)

        rows, models, sizes = {}, {}, {}

        def add_row(name, model, seconds, first, step_count, stats, loss, size, whole=None):
            # ``model``: what is exported; ``whole``: what is counted, if it has more layers
            prof = profile(whole or model)
            rows[name] = PeerRow(name, prof.params, prof.madds, seconds, first, step_count,
                                 float(stats["AP50"]), float(stats["AP"]), loss=float(loss))
            models[name], sizes[name] = model, size

        add_row(NAMES[0], ssd_model, ssd_seconds, ssd_first, ssd_steps, ssd_metrics, ssd_loss,
                recipe.input_size)
        add_row(NAMES[1], keras.Model(yolo.inputs, yolo.outputs, name="yolov8_raw_head"),
                clock.seconds, clock.first_step_s, clock.steps, yolo_stats, clock.loss,
                recipe.input_size, whole=yolo)
        if not np.isfinite(clock.loss):
            notes.append(f"YOLOV8's last training loss is {clock.loss}: its AP is not a result")

        samples = calibration_images(train_source, recipe, calibration)
        converted = {}  # name: int8 flatbuffer, converted from ``samples``
        if equal_latency:
            notes += _equal_latency_rows(
                add_row, recipe, root, budget, ssd_steps, steps_per_epoch, train, samples,
                models, converted, candidates, os.path.join(work, "variants"), verbose)

        from benchmarks.timing import tflite_timings
        import tensorflow as tf

        contents, inputs = {}, {}
        for name, model in models.items():
            size = sizes[name]
            resized = samples if size == recipe.input_size else tf.image.resize(
                samples, (size, size)).numpy()
            try:
                contents[name] = converted.get(name) or export.convert(
                    model, mode="int8", representative_data=resized, output="raw")
                rows[name].tflite_bytes = len(contents[name])
                inputs[name] = resized[:1]
            except export.ExportError as err:
                notes.append(f"{name}: int8 conversion failed: {str(err).splitlines()[0]}")
        if contents:
            timings = tflite_timings(contents, threads=1, repeats=repeats, rounds=5,
                                     inputs=inputs)
            for name, timing in timings.items():
                rows[name].int8_wall_ms, rows[name].int8_cpu_ms = timing.wall_ms, timing.cpu_ms
    finally:
        shutil.rmtree(work, ignore_errors=True)

    notes += [
        f"data: {os.path.abspath(root)} ({train.num_images} train, {val.num_images} val images), "
        f"batch {recipe.batch_size}, Adam {recipe.learning_rate:g}; {NAMES[0]} and YOLOV8 at "
        f"{recipe.input_size} px, SSDLite width {recipe.alpha:g}, {recipe.box_loss} box loss",
        "AP: pycocotools on the same val split; SSDLite class-wise NMS, YOLOV8 keras-cv "
        f"class-agnostic NMS; both score >= {recipe.score_threshold:g}, IoU {recipe.nms_iou:g}, "
        f"<= {recipe.max_detections} detections",
        "YOLOV8 trains traced with grappler's constant folding off "
        "(peer_bench.without_constant_folding): with it on, the CIoU of keras-cv's padding "
        "boxes is NaN and so is the loss from the first step",
        "train s: fit time after the first step, which is timed apart (1st s: graph tracing, "
        "the shuffle buffer's fill); YOLOV8's budget is SSDLite's train s",
        "MAdds: keras_mnv2.profile (Conv2D, DepthwiseConv2D and Dense multiply-adds) on both",
        "TFLite int8: raw heads (no box decoding, no NMS) for all: converter PTQ "
        f"({len(samples)} calibration images), XNNPACK, 1 thread, median of {repeats} invocations",
    ]
    for line in table_lines(rows) + [f"- {n}" for n in notes]:
        print(line, flush=True)
    if plot:
        import platform

        plot_latency(rows, plot, title=f"{len(rows)} detectors trained {budget:.0f} s each on "
                                       f"the embedded COCO; int8 timed on {_cpu_name()} "
                                       f"({platform.machine()})")
        print(f"AP against int8 latency: {plot}", flush=True)
    return rows, notes


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "this CPU"


def _equal_latency_rows(add_row, recipe, root, budget, base_steps, steps_per_epoch, train,
                        samples, models, converted, candidates, work, verbose):
    """Chooses the SSDLite sizes whose int8 latency brackets YOLOV8's (``models[NAMES[1]]``,
    converted from ``samples`` into ``converted``), trains each for the baseline's training time
    (its epochs from the ratio of measured step times, stopped at the budget in any case) and
    adds their rows (``add_row``); returns notes."""
    from benchmarks.timing import tflite_timings
    from keras_mnv2.deploy import export

    notes = []
    if candidates is None:
        candidates = ssdlite_candidates(recipe.alpha, recipe.input_size)
    converted[NAMES[1]] = export.convert(models[NAMES[1]], mode="int8",
                                         representative_data=samples, output="raw")
    yolo_ms = tflite_timings({NAMES[1]: converted[NAMES[1]]}, threads=1, repeats=50, rounds=5,
                             inputs=samples[:1])[NAMES[1]].cpu_ms
    latencies = candidate_latencies(candidates, train.num_classes, samples)
    chosen = bracket(latencies, yolo_ms)
    print(f"int8 ms of untrained SSDLite candidates (YOLOV8 {yolo_ms:.2f}): " + ", ".join(
        f"{a:g}/{s} px {ms:.2f}" for (a, s), ms in latencies.items()) + "; chosen: " + ", ".join(
        f"{a:g}/{s} px" for a, s in chosen), flush=True)
    notes.append(f"equal latency: SSDLite sizes chosen from {len(latencies)} untrained "
                 f"candidates as the nearest below and above YOLOV8's int8 {yolo_ms:.2f} ms: "
                 + ", ".join(f"width {a:g} at {s} px {latencies[(a, s)]:.2f} ms"
                             for a, s in chosen))
    if base_steps is None:  # read from a finished run: its planned steps
        base_steps = recipe.epochs * steps_per_epoch
    probe = dict(root=root, steps=10, configs=("SSDLite",), verbose=True)
    base_ms = step_times(input_size=recipe.input_size, alpha=recipe.alpha, **probe)["SSDLite"]
    for alpha, size in chosen:
        variant_ms = step_times(input_size=size, alpha=alpha, **probe)["SSDLite"]
        epochs = equal_time_epochs(base_steps, base_ms, variant_ms, steps_per_epoch)
        variant = dataclasses.replace(recipe, alpha=alpha, input_size=size, epochs=epochs,
                                      warmup_epochs=min(recipe.warmup_epochs, epochs / 4))
        print(f"{variant_name(alpha, size)}: {epochs} epochs ({variant_ms:.0f} ms a step against "
              f"{base_ms:.0f}), at most {budget:.1f} s after its first step", flush=True)
        metrics, model, clock = train_ssdlite(root, variant, budget,
                                              os.path.join(work, f"{alpha:g}_{size}"), verbose)
        add_row(variant_name(alpha, size), model, clock.seconds, clock.first_step_s, clock.steps,
                metrics, clock.loss, size)
        notes.append(f"{variant_name(alpha, size)}: {epochs} epochs of the same recipe, from "
                     f"step times {variant_ms:.0f} ms against the baseline's {base_ms:.0f} "
                     f"(fixed batch, untrained)"
                     + ("; stopped at the time budget" if clock.steps < epochs * steps_per_epoch
                        else ""))
    return notes


CONFIGS = ("SSDLite", "SSDLite, trivial loss", "YOLOV8")


def step_times(train_images=2000, val_images=250, input_size=160, data_root=None, steps=30,
               batch_size=None, configs=CONFIGS, verbose=True, alpha=None, root=None):
    """Milliseconds per training step (the median over ``steps``, after 3 warm-up steps) of both
    detectors, untrained, each on one fixed batch of its own training input (cached, so neither
    the input pipeline nor the loss's targets cost anything after the first); and SSDLite's
    again with a trivial loss (the mean square of its outputs), to show what its losses cost.
    ``configs``: which of ``CONFIGS``; ``batch_size`` and ``alpha`` (SSDLite's width): the
    recipe's by default; ``root``: a COCO-format dataset to read (else the embedded one at these
    sizes, generated if not there). Returns {config: ms}."""
    import keras
    from keras import ops

    from keras_mnv2.detection.losses import ssd_losses
    from pipelines.data import coco
    from pipelines.jobs import detection

    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise ValueError(f"unknown step-time configs {sorted(unknown)}; known: {CONFIGS}")
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=input_size,
                                 batch_size=batch_size or detection.EMBEDDED.batch_size,
                                 alpha=alpha or detection.EMBEDDED.alpha)
    root = root or embedded_coco(train_images, val_images, data_root)
    train = coco.load_coco(root, "train")
    source = coco.coco_dataset(train, size_mismatch=recipe.size_mismatch)
    max_boxes = max(1, int(np.max(np.diff(train.box_starts))))

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def ms_per_step(model, dataset):
        # each step timed by itself (batch begin to end), in one fit call: the time of the whole
        # call, over fit's iterator set-up, was not proportional to its steps here
        clock = StepClock()
        history = model.fit(dataset.take(1).cache().repeat(), steps_per_epoch=steps + 3,
                            epochs=1, verbose=0, callbacks=[clock])
        if not np.isfinite(history.history["loss"][-1]):
            raise FloatingPointError(f"{model.name}: the training loss is not finite")
        return float(np.median(clock.times[3:])) * 1e3

    keras.utils.set_random_seed(recipe.seed)
    ssd = detection.build_model(recipe, train.num_classes, None)
    ssd_input = detection.train_dataset(source, recipe, ssd.anchors)
    times = {}
    for name, loss in (("SSDLite", ssd_losses(mode=recipe.class_loss)),
                       ("SSDLite, trivial loss", lambda y, p: ops.mean(ops.square(p)))):
        if name not in configs:
            continue
        ssd.compile(optimizer=detection.make_optimizer(recipe, 100), loss=loss)
        times[name] = ms_per_step(ssd, ssd_input)
    if "YOLOV8" in configs:
        yolo = compiled_yolo(train.num_classes, recipe)
        with without_constant_folding():
            times["YOLOV8"] = ms_per_step(yolo, yolo_train_dataset(source, recipe, max_boxes))
    if verbose:
        print(f"ms per training step on one fixed batch of {recipe.batch_size} at {input_size} "
              f"px, SSDLite width {recipe.alpha:g} (median of {steps}, after 3): " + ", ".join(
                  f"{name} {value:.0f}" for name, value in times.items()), flush=True)
    return times


def table_lines(rows):
    header = (f"{'model':<34} {'params':>10} {'MAdds':>8} {'1st s':>6} {'train s':>8} "
              f"{'steps':>6} {'AP50':>6} {'AP':>6} {'int8 KB':>8} {'int8 ms':>8} {'cpu ms':>7}")
    lines = [header, "-" * len(header)]
    for row in rows.values():
        steps = "-" if row.steps is None else f"{row.steps}"
        lines.append(
            f"{row.name:<34} {row.params:>10,} {row.madds / 1e6:>7.1f}M "
            f"{row.first_step_s:>6.1f} {row.train_seconds:>8.1f} "
            f"{steps:>6} {row.ap50:>6.3f} {row.ap:>6.3f} {row.tflite_bytes / 1024:>8.0f} "
            f"{row.int8_wall_ms:>8.2f} {row.int8_cpu_ms:>7.2f}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wall-seconds", type=float, default=None,
                        help="training budget of each model (default: YOLOV8 gets SSDLite's "
                             "fit time of the full embedded recipe)")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=250)
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--ssdlite-run", default=None,
                        help="a finished `keras-mnv2 train coco` run dir to read SSDLite from")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=100)
    parser.add_argument("--no-equal-latency", action="store_true",
                        help="skip the SSDLite rows at YOLOV8's int8 latency")
    parser.add_argument("--candidates", default=None, metavar="ALPHA:SIZE,...",
                        help="SSDLite sizes to choose the equal-latency rows from (default: "
                             f"widths {','.join(map(str, WIDTHS))} at the input size, input "
                             f"sizes {','.join(map(str, SIZES))} at width 0.35)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="draw AP50 and AP against int8 latency into this PNG")
    parser.add_argument("--step-times", type=int, default=0, metavar="STEPS",
                        help="only time STEPS training steps of each untrained model on one "
                             "fixed batch (step_times) and stop")
    args = parser.parse_args(argv)
    if args.step_times:
        step_times(train_images=args.train_images, val_images=args.val_images,
                   input_size=args.input_size, data_root=args.data_root, steps=args.step_times)
        return
    peer_bench(wall_seconds=args.wall_seconds, train_images=args.train_images,
               val_images=args.val_images, input_size=args.input_size,
               ssdlite_run=args.ssdlite_run, data_root=args.data_root, repeats=args.repeats,
               calibration=args.calibration, equal_latency=not args.no_equal_latency,
               candidates=parse_candidates(args.candidates, parser), plot=args.plot)


def parse_candidates(text, parser=None):
    """``"0.75:160,0.35:320"`` as [(0.75, 160), (0.35, 320)]; None for None."""
    if text is None:
        return None
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            alpha, size = item.split(":")
            pairs.append((float(alpha), int(size)))
        except ValueError:
            message = f"--candidates: {item!r} is not ALPHA:SIZE (e.g. 0.75:160)"
            if parser is None:
                raise ValueError(message) from None
            parser.error(message)
        if pairs[-1][0] <= 0 or pairs[-1][1] < 32:
            message = f"--candidates: {item!r}: width must be > 0 and size >= 32"
            if parser is None:
                raise ValueError(message)
            parser.error(message)
    return pairs


if __name__ == "__main__":
    main()
