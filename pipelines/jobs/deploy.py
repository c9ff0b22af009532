"""Deployment of a trained job: quantization-aware fine-tuning, TFLite export and the same
evaluation through the TFLite interpreter. ``keras-mnv2 qat|export <job>`` / ``make qat|tflite``.

Every function starts from a finished training run directory (``runs/<job>``): its model file and
its metrics.json, which records the recipe (rebuilt here as the job's dataclass) and the dataset,
so calibration and fine-tuning use the same tf.data pipeline as the float run, and evaluation
the same val split and metric: COCO AP/AP50 (pycocotools), VOC mean IoU, ImageNet top-1/top-5.

Outputs: ``run_dir/tflite/<job>_<mode>.tflite``, ``run_dir/qat/`` (the QAT run, through the
training driver: history.csv, last.weights.h5, the resume state backup/), and the comparison
``run_dir/deploy.{md,png,json}``. With ``expansion_splits`` (paper section 5.1,
memory-efficient inference) the trained model is first rewritten in split-expansion form
(``keras_mnv2.split.split_expansion``): the files are
``<job>_<mode>_split.tflite`` (QAT in ``run_dir/qat_split/``), beside the unsplit ones in the
comparison.
"""

import dataclasses
import json
import os
import time

import numpy as np

from keras_mnv2.errors import InputError, MissingFileError

JOBS = ("coco", "voc", "imagenet")
MODEL_FILES = {"coco": "last.keras", "voc": "last.keras", "imagenet": "model.keras"}
# The metric a table reports per job (x100), then the others it shows.
METRICS = {"coco": ("AP50", "AP"), "voc": ("mean_iou",), "imagenet": ("top1", "top5")}
DEFAULT_MODES = ("float32", "int8")
QAT_LR_FACTOR = 0.02  # QAT fine-tunes at 1/50 of the recipe's peak learning rate (see run_qat)


def _check_job(job):
    if job not in JOBS:
        raise InputError(f"job must be one of {JOBS}, got {job!r}")


def model_path(job, run_dir):
    _check_job(job)
    return os.path.join(run_dir, MODEL_FILES[job])


# The other quantizers' files beside the default ones: (mode, variant) -> the comparison label.
VARIANTS = {("int8", "litert"): "TFLite PTQ int8 (LiteRT Quantizer)",
            ("qat", "keras"): "TFLite QAT int8 (Keras 3)"}


def tflite_path(job, run_dir, mode, split=False, variant=None):
    """``run_dir/tflite/<job>_<mode>[_<variant>][_split].tflite``; variant "litert" (int8 by
    LiteRT Quantizer) or "keras" (Keras 3 QAT), None for the converter's int8 / TFMOT QAT."""
    return os.path.join(run_dir, "tflite", f"{job}_{mode}{'_' + variant if variant else ''}"
                                           f"{'_split' if split else ''}.tflite")


def parse_expansion_splits(text):
    """``--expansion-splits``: "3" (every block in 3 groups) -> 3; "3,6,3" (per block, from the
    stem Conv1 + block 0, the rest whole) -> (3, 6, 3, 1, ..., 1), 17 counts. None or "" -> None.
    """
    from keras_mnv2.mobilenet_v2 import block_plan

    if text is None or not str(text).strip():
        return None
    blocks = len(block_plan())
    try:
        counts = [int(part) for part in str(text).split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(counts) > blocks:
        raise InputError(f"expansion splits must be an integer >= 1 or up to {blocks} "
                         f"comma-separated integers >= 1 (one per block), got {text!r}")
    if len(counts) == 1 and "," not in str(text):
        return counts[0]
    return tuple(counts) + (1,) * (blocks - len(counts))


def _split_model(model, expansion_splits):
    """``model`` in split-expansion form (``expansion_splits`` as ``split_expansion``)."""
    from keras_mnv2.split import split_blocks, split_expansion

    split = split_expansion(model, expansion_splits)
    print(f"split expansion: {split_blocks(split)}", flush=True)
    return split


def load_run(run_dir):
    """The run's metrics.json as a dict; raises MissingFileError (a FileNotFoundError) naming
    the file, InputError for one that is not JSON."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        raise MissingFileError(f"{path} not found: train the job first (keras-mnv2 train ...)")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as err:
        raise InputError(f"{path} cannot be read as JSON ({err}): train the job again, or give "
                         "another --run-dir") from None


def _module(job):
    if job == "coco":
        from pipelines.jobs import detection as module
    elif job == "voc":
        from pipelines.jobs import segmentation as module
    else:
        from pipelines.jobs import classification as module
    return module


def recipe_from_metrics(job, metrics):
    """The job's recipe dataclass rebuilt from ``metrics["recipe"]`` (unknown keys are an error,
    missing ones take the dataclass default)."""
    _check_job(job)
    module = _module(job)
    recipe_class = type(module.EMBEDDED)
    stored = metrics.get("recipe")
    if not isinstance(stored, dict):
        raise InputError(f"metrics.json of the {job} run has no recipe")
    names = {f.name for f in dataclasses.fields(recipe_class)}
    unknown = sorted(set(stored) - names)
    if unknown:
        raise InputError(f"recipe in metrics.json has fields {recipe_class.__name__} lacks: "
                         f"{unknown}")
    return recipe_class(**stored)


# ---------------------------------------------------------------------------- per-job glue


@dataclasses.dataclass
class JobData:
    """What deployment needs of a job: recipe, pipelines, loss and the two evaluations."""

    job: str
    recipe: object
    train_ds: object  # the float run's training pipeline (repeating, batched)
    steps_per_epoch: int
    loss: object
    learning_rate: float  # the recipe's (peak) learning rate
    export_kwargs: dict  # nms for the detector (anchors: the model's own)
    evaluate_keras: object  # model -> metrics dict
    evaluate_tflite: object  # path -> metrics dict


def _dataset_dir(metrics, job):
    dataset = metrics.get("dataset")
    if not dataset or dataset.startswith(("tfds:", "tfrecord:")):
        raise InputError(f"the {job} run used {dataset!r}: deploy works from a dataset "
                         "directory recorded in metrics.json")
    if not os.path.isdir(dataset):
        raise MissingFileError(f"dataset directory of the {job} run not found: {dataset}")
    return dataset


def saved_anchors(path):
    """The anchors a ``.keras`` file holds (a ``BuiltModel`` saves them with its weights), read
    without building the model; None when it holds none."""
    import io
    import zipfile

    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            weights = archive.read("model.weights.h5")
        with h5py.File(io.BytesIO(weights), "r") as f:
            found = f.get("vars/anchors")
            return None if found is None else np.asarray(found, np.float32)
    except (KeyError, OSError, zipfile.BadZipFile):
        return None


def run_anchors(run_dir, recipe):
    """The anchors of the run's SSDLite, read off its model file without building the model:
    the ones saved with it, else its builder record's; the recipe's input size with the default
    anchor settings for a file with neither."""
    from keras_mnv2.detection.ssdlite import anchors_from_arguments, ssdlite_anchors
    from keras_mnv2.record import read_record

    path = model_path("coco", run_dir)
    saved = saved_anchors(path) if os.path.exists(path) else None
    if saved is not None:
        return saved
    record = read_record(path) if os.path.exists(path) else None
    if record is not None and record[0].endswith(".SSDLite"):
        return anchors_from_arguments(record[1])
    return ssdlite_anchors(recipe.input_size)


def check_tflite(path, images, num_classes=None, class_outputs=()):
    """Raises ValueError saying what differs when the .tflite file at ``path`` does not fit the
    run: its input shape against the run's eval ``images`` (a batch), its input dtype (float32,
    int8 or uint8), and the last dimension of each output in ``class_outputs`` (``"*"``: every
    output) against ``num_classes``. Checked before evaluating, so that nothing is resized
    silently."""
    from keras_mnv2.deploy import tflite

    try:
        runner = tflite.interpreter(path).get_signature_runner()
        inputs = runner.get_input_details()
    except (ValueError, RuntimeError) as err:
        raise InputError(f"{path} cannot be read as a TFLite model with a signature "
                         f"({str(err).splitlines()[0]})") from None
    if len(inputs) != 1:
        raise InputError(f"{path} has {len(inputs)} inputs ({', '.join(inputs)}): expected one "
                         "image input")
    (detail,) = inputs.values()
    problems = []
    got = tuple(int(d) for d in detail.get("shape_signature", detail["shape"])[1:])
    want = tuple(int(d) for d in images.shape[1:])
    if len(got) != len(want) or any(g not in (-1, w) for g, w in zip(got, want)):
        problems.append(f"its input is {'x'.join(map(str, got))} but the run's images are "
                        f"{'x'.join(map(str, want))}")
    if np.dtype(detail["dtype"]) not in (np.float32, np.int8, np.uint8):
        problems.append(f"its input type is {np.dtype(detail['dtype']).name} (expected float32, "
                        "int8 or uint8)")
    if num_classes is not None:
        for name, out in runner.get_output_details().items():
            if (class_outputs == "*" or name in class_outputs) and len(out["shape"]) \
                    and int(out["shape"][-1]) != num_classes:
                problems.append(f"its output {name!r} has {int(out['shape'][-1])} classes but the "
                                f"run has {num_classes}")
    if problems:
        raise InputError(f"{path} does not fit this run: " + "; ".join(problems)
                         + " (export it from this run: keras-mnv2 export, or give its --run-dir)")


def _coco_data(run_dir, metrics, recipe):
    from keras_mnv2.detection.losses import ssd_losses
    from keras_mnv2.deploy import export, tflite
    from pipelines.data import coco, coco_eval
    from pipelines.jobs import detection

    root = _dataset_dir(metrics, "coco")
    train, val = coco.load_coco(root, "train"), coco.load_coco(root, "val")
    anchors = run_anchors(run_dir, recipe)
    train_ds = detection.train_dataset(coco.coco_dataset(train), recipe, anchors)
    val_source = coco.coco_dataset(val)

    def score(detections):
        stats = coco_eval.coco_evaluate(val.coco, detections, val.label_to_category)
        return {k: float(stats[k]) for k in ("AP", "AP50", "AP75")} | {
            "images": len(detections)}

    def evaluate_keras(model):
        return score(detection.predict_detections(
            model, detection.eval_dataset(val_source, recipe), anchors, recipe))

    def evaluate_tflite(path):
        detections = []
        for images, _ in detection.eval_dataset(val_source, recipe).take(1):
            check_tflite(path, images, train.num_classes + 1, ("classes",))
        for images, image_ids in detection.eval_dataset(val_source, recipe):
            out = tflite.run_signature(path, images.numpy())
            if "detection_boxes" not in out:
                raise InputError(f"{path} has outputs {sorted(out)}: expected the post-processed "
                                 "detections (export with output='detections')")
            for i, image_id in enumerate(image_ids.numpy()):
                n = int(out["num_detections"][i])
                detections.append({"image_id": int(image_id),
                                   "boxes": out["detection_boxes"][i, :n],
                                   "scores": out["detection_scores"][i, :n],
                                   # the op's classes are 0-based: label 1 is class 0
                                   "classes": out["detection_classes"][i, :n].astype(np.int64)
                                   + 1})
        return score(detections)

    nms = export.NMS(max_detections=recipe.max_detections,
                     score_threshold=recipe.score_threshold, iou_threshold=recipe.nms_iou)
    return JobData("coco", recipe, train_ds, max(1, train.num_images // recipe.batch_size),
                   ssd_losses(mode=recipe.class_loss), recipe.learning_rate,
                   dict(nms=nms, labels=list(train.label_names)),  # anchors: the model's own
                   evaluate_keras, evaluate_tflite)


def _voc_data(run_dir, metrics, recipe):
    from keras_mnv2.deploy import tflite
    from keras_mnv2.segmentation import SegmentationLoss, confusion_matrix, iou_from_confusion
    from pipelines.jobs import segmentation
    from pipelines.data import voc

    root = _dataset_dir(metrics, "voc")
    names = metrics.get("class_names")
    train = voc.load_voc(root, metrics.get("train_split") or "train", class_names=names)
    val = voc.load_voc(root, metrics.get("val_split") or "val", class_names=names)
    num_classes = len(names)
    ignore = segmentation.IGNORE_LABEL

    def eval_ds():
        return segmentation.eval_dataset(val, recipe.eval_size, recipe.batch_size)

    def evaluate_keras(model):
        at_size = segmentation.resized_model_builder(model, recipe, num_classes)
        result = segmentation.evaluate(at_size(recipe.eval_size), eval_ds(), num_classes)
        return {"mean_iou": result["mean_iou"], "pixel_accuracy": result["pixel_accuracy"],
                "images": result["num_images"]}

    def evaluate_tflite(path):
        cm = np.zeros((num_classes, num_classes), np.int64)
        images_seen = 0
        for images, _ in eval_ds().take(1):
            check_tflite(path, images, num_classes, ("logits",))
        for images, labels in eval_ds():
            out = tflite.run_signature(path, images.numpy())
            if "mask" in out:
                predicted = out["mask"]
            elif "logits" in out:
                predicted = np.argmax(out["logits"], axis=-1)
            else:
                raise InputError(f"{path} has outputs {sorted(out)}: expected logits or mask")
            cm += confusion_matrix(labels, predicted, num_classes, ignore_label=ignore)
            images_seen += len(predicted)
        mean_iou, _ = iou_from_confusion(cm)
        return {"mean_iou": float(mean_iou), "pixel_accuracy": float(np.trace(cm) / cm.sum()),
                "images": images_seen}

    return JobData("voc", recipe, segmentation.train_dataset(train, recipe),
                   max(1, train.num_images // recipe.batch_size),
                   SegmentationLoss(ignore_label=ignore), recipe.learning_rate,
                   {"labels": list(names)}, evaluate_keras, evaluate_tflite)


def _imagenet_data(run_dir, metrics, recipe):
    from keras_mnv2.deploy import tflite
    from pipelines.jobs import classification
    from pipelines.data import imagenet as imagenet_data

    train, val, _ = classification.sources(data_dir=_dataset_dir(metrics, "imagenet"))

    def eval_ds():
        return imagenet_data.eval_dataset(val, recipe.batch_size, recipe.resolution,
                                          crop_fraction=recipe.crop_fraction)

    def evaluate_keras(model):
        result = classification.evaluate(model, eval_ds())
        return {"top1": result["top1"], "top5": result["top5"], "images": result["images"]}

    def evaluate_tflite(path):
        correct1 = correct_k = images = 0
        for batch in eval_ds().take(1):
            check_tflite(path, batch[0], val.num_classes, "*")
        for batch in eval_ds():
            x, labels, weights = batch if len(batch) == 3 else (*batch, None)
            (scores,) = tflite.run_signature(path, x.numpy()).values()
            labels = labels.numpy().reshape(-1)
            keep = np.ones(len(labels), bool) if weights is None else weights.numpy() > 0
            k = min(5, scores.shape[-1])
            top = np.argsort(-scores, axis=-1)[:, :k]  # placeholders of bad images: weight 0
            correct1 += int(((top[:, 0] == labels) & keep).sum())
            correct_k += int(((top == labels[:, None]).any(-1) & keep).sum())
            images += int(keep.sum())
        if images == 0:
            raise InputError(f"{path}: the val split held no decodable image")
        return {"top1": correct1 / images, "top5": correct_k / images, "images": images}

    train_ds = imagenet_data.train_dataset(
        train, recipe.batch_size, recipe.resolution, seed=recipe.seed, cache=recipe.cache,
        shuffle_buffer=recipe.shuffle_buffer, area_range=(recipe.min_crop_area, 1.0))
    steps = recipe.steps_per_epoch or max(1, train.num_examples // recipe.batch_size)
    loss = classification.SmoothedCrossentropy(train.num_classes, recipe.label_smoothing)
    return JobData("imagenet", recipe, train_ds, steps, loss,
                   classification.peak_learning_rate(recipe),
                   {"output": "logits", "labels": list(train.class_names)},
                   evaluate_keras, evaluate_tflite)


def job_data(job, run_dir):
    """``JobData`` of a finished run in ``run_dir``."""
    _check_job(job)
    metrics = load_run(run_dir)
    recipe = recipe_from_metrics(job, metrics)
    return {"coco": _coco_data, "voc": _voc_data, "imagenet": _imagenet_data}[job](
        run_dir, metrics, recipe)


def load_model(job, run_dir):
    from keras_mnv2.deploy import qat

    path = model_path(job, run_dir)
    if not os.path.exists(path):
        raise MissingFileError(f"no trained {job} model: {path} not found (train it first)")
    return qat.load_keras_model(path)


# ---------------------------------------------------------------------------- QAT


def _rename_outputs(qat_model, loss, train_ds):
    """Dict losses and targets keyed by the float model's output names -> the QAT model's
    (TFMOT may rename them, e.g. boxes -> quant_boxes)."""
    if not isinstance(loss, dict):
        return loss, train_ds
    if isinstance(qat_model.output, dict) and set(loss) <= set(qat_model.output):
        return loss, train_ds  # a dict-output model is fitted by its output keys
    names = list(qat_model.output_names)
    mapping = {}
    for key in loss:
        match = [n for n in names if n == key or n == f"quant_{key}"]
        if not match:
            raise ValueError(f"QAT model outputs {names} have none for loss {key!r}")
        mapping[key] = match[0]
    if all(k == v for k, v in mapping.items()):
        return loss, train_ds
    renamed = train_ds.map(lambda x, y: (x, {mapping[k]: v for k, v in y.items()}))
    return {mapping[k]: v for k, v in loss.items()}, renamed


def run_qat(job, run_dir=None, epochs=2, learning_rate=None, steps_per_epoch=None,
            io_dtype="float32", verbose="auto", expansion_splits=None, scheme="tfmot"):
    """Quantization-aware fine-tuning of a finished run, then the QAT int8 .tflite.

    Ranges are calibrated on the float run's training pipeline (same recipe), the model is
    fine-tuned ``epochs`` epochs at ``learning_rate`` (default 1/50 of the recipe's peak) by
    the jobs' training driver (``pipelines.jobs.driver.fit``) into ``run_dir/qat``: history.csv,
    ``last.weights.h5`` and the resume state ``backup/``, each written under a temporary name
    and renamed (re-running the same command after a kill resumes from the last finished
    epoch). Then it is exported to ``run_dir/tflite/<job>_qat.tflite``. Returns the
    ``ExportReport``.

    With ``expansion_splits`` (an int or 17 per-block counts, see ``parse_expansion_splits``)
    the float model is split first (``keras_mnv2.deploy.qat.quantize`` folds the projection BNs of the
    split blocks into the partial projections, so that the QAT model is int8 throughout), and
    the run goes to ``run_dir/qat_split`` and ``<job>_qat_split.tflite``.

    ``scheme="keras"``: the Keras 3 QAT model (``keras_mnv2.deploy.keras_qat``) instead of the
    TFMOT twin, fine-tuned by the same driver with the same data, loss, optimizer, learning
    rate and steps, into ``run_dir/qat_keras`` (history.csv, ``backup/``, and ``model.keras`` at
    the end) and ``<job>_qat_keras.tflite``.
    """
    from keras_mnv2.deploy import export, qat
    from pipelines.jobs import driver

    if scheme not in qat.SCHEMES:
        raise InputError(f"scheme must be one of {qat.SCHEMES}, got {scheme!r}")
    run_dir = run_dir or f"runs/{job}"
    data = job_data(job, run_dir)
    model = load_model(job, run_dir)
    learning_rate = learning_rate or QAT_LR_FACTOR * data.learning_rate
    steps = steps_per_epoch or data.steps_per_epoch
    name = {"tfmot": "QAT", "keras": "Keras 3 QAT"}[scheme]
    print(f"{name} {job}: {epochs} epoch(s) of {steps} steps at learning rate {learning_rate:g}",
          flush=True)
    split = expansion_splits is not None
    if split:  # quantize folds the split blocks' projection BNs
        model = _split_model(model, expansion_splits)
    q = qat.quantize(model, calibration_data=data.train_ds, scheme=scheme)
    optimizer = getattr(data.recipe, "optimizer", "adam")
    optimizer = optimizer if optimizer in ("adam", "sgd", "rmsprop") else "adam"
    if scheme == "tfmot":  # a tf_keras model: saved as weights each epoch (a TFMOT model does
        # not load back from a whole-model .keras file)
        loss, train_ds = _rename_outputs(q, data.loss, data.train_ds)
        qat.compile_qat(q, loss, learning_rate, optimizer)
        out_dir, model_file, variant = "qat", "last.weights.h5", None
    else:
        train_ds = data.train_ds
        q.compile(optimizer=_keras_optimizer(optimizer, learning_rate), loss=data.loss)
        out_dir, model_file, variant = "qat_keras", None, "keras"  # model.keras at the end
    out_dir = os.path.join(run_dir, out_dir + ("_split" if split else ""))
    start = time.time()
    nan = driver.fit(q, train_ds, epochs, out_dir, steps_per_epoch=steps, verbose=verbose,
                     model_file=model_file)
    if nan:
        raise RuntimeError(f"{name} of {job} diverged ({nan}): lower --learning-rate")
    if scheme == "keras":
        driver.save_model(q, os.path.join(out_dir, "model.keras"))
    report = export.export_tflite(q, tflite_path(job, run_dir, "qat", split, variant),
                                  mode="qat", io_dtype=io_dtype, **data.export_kwargs)
    print(f"{name} done in {time.time() - start:.0f} s; {report.summary()}", flush=True)
    return report


def _keras_optimizer(name, learning_rate):
    import keras

    choices = {"adam": lambda: keras.optimizers.Adam(learning_rate),
               "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=0.9),
               "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate, momentum=0.9)}
    return choices[name]()


# ---------------------------------------------------------------------------- export + eval


def run_export(job, run_dir=None, modes=DEFAULT_MODES, io_dtype="float32",
               expansion_splits=None, metadata="auto", quantizer="converter"):
    """Writes ``run_dir/tflite/<job>_<mode>.tflite`` for each of ``modes`` (float32, float16,
    dynamic, int8: post-training quantization calibrated on the training pipeline). Returns
    {mode: ExportReport}. With ``expansion_splits`` the model is split first
    (``parse_expansion_splits``) and the files are ``<job>_<mode>_split.tflite``. ``metadata``
    as ``export_tflite``'s (the run's class names are the labels; False: no metadata).
    ``quantizer="litert"``: int8 by LiteRT Quantizer, written to ``<job>_int8_litert.tflite``
    (the other modes as usual)."""
    from keras_mnv2.deploy import export

    run_dir = run_dir or f"runs/{job}"
    for mode in modes:
        if mode not in export.MODES or mode == "qat":
            raise InputError(f"export mode must be one of float32, float16, dynamic, int8 "
                             f"(qat: keras-mnv2 qat), got {mode!r}")
    model = load_model(job, run_dir)
    split = expansion_splits is not None
    if split:
        model = _split_model(model, expansion_splits)
    data = job_data(job, run_dir)
    kwargs = dict(data.export_kwargs, metadata=metadata)
    if metadata is False:
        kwargs.pop("labels", None)
    reports = {}
    for mode in modes:
        litert = mode == "int8" and quantizer == "litert"
        report = export.export_tflite(
            model, tflite_path(job, run_dir, mode, split, "litert" if litert else None),
            mode=mode, representative_data=data.train_ds if mode == "int8" else None,
            io_dtype=io_dtype if mode == "int8" else "float32", quantizer=quantizer
            if mode == "int8" else "converter", **kwargs)
        print(report.summary(), flush=True)
        reports[mode] = report
    return reports


def evaluate_tflite(job, tflite_file, run_dir=None, keras_metrics=True):
    """The job's evaluation through the TFLite interpreter: {"tflite": metrics, "keras": the
    float Keras model's metrics (None with keras_metrics=False)}."""
    run_dir = run_dir or f"runs/{job}"
    if not os.path.exists(tflite_file):
        raise MissingFileError(f"TFLite file not found: {tflite_file}")
    data = job_data(job, run_dir)
    result = {"tflite": data.evaluate_tflite(tflite_file), "keras": None}
    if keras_metrics:
        result["keras"] = data.evaluate_keras(load_model(job, run_dir))
    return result


def evaluate_keras(job, model_file, run_dir=None):
    """The job's evaluation of a .keras model file on the val split of the run in ``run_dir``."""
    from keras_mnv2.deploy import qat

    run_dir = run_dir or f"runs/{job}"
    return job_data(job, run_dir).evaluate_keras(qat.load_keras_model(model_file))


def compare(job, run_dir=None, modes=None):
    """float Keras vs every ``run_dir/tflite/<job>_<mode>.tflite`` present (or ``modes``):
    metric x100 and file size. Writes deploy.md, deploy.png and deploy.json; returns the rows."""
    run_dir = run_dir or f"runs/{job}"
    data = job_data(job, run_dir)
    model_file = model_path(job, run_dir)
    rows = [{"model": "Keras float32", "file": model_file,
             "size_bytes": os.path.getsize(model_file),
             **data.evaluate_keras(load_model(job, run_dir))}]
    from keras_mnv2.deploy import export

    for mode in modes or export.MODES:
        from keras_mnv2.deploy.tflite import size_breakdown

        variants = [None] + [v for (m, v) in VARIANTS if m == mode]
        # the split-expansion file and the other quantizers' files, when present, beside
        for split, variant in [(sp, v) for sp in (False, True) for v in variants]:
            path = tflite_path(job, run_dir, mode, split, variant)
            if not os.path.exists(path):
                if modes and not split and variant is None:
                    raise MissingFileError(f"{path} not found: export it first")
                continue
            label = VARIANTS.get((mode, variant)) or {
                "int8": "TFLite PTQ int8", "qat": "TFLite QAT int8"}.get(mode, f"TFLite {mode}")
            label += " split" if split else ""
            rows.append({"model": label, "file": path, "size_bytes": os.path.getsize(path),
                         "size": size_breakdown(path), **data.evaluate_tflite(path),
                         "latency_ms": latency_ms(path)})
    write_table(job, rows, run_dir)
    return rows


def latency_ms(path, runs=30, num_threads=1):
    """Median wall time (ms) of one invocation of a .tflite file on one random input, at
    ``num_threads`` threads (XNNPACK), after 3 warm-up runs."""
    from keras_mnv2.deploy import tflite

    interp = tflite.interpreter(path, num_threads=num_threads)
    detail = interp.get_input_details()[0]
    x = tflite.sample_input(detail)
    times = []
    for i in range(runs + 3):
        interp.set_tensor(detail["index"], x)
        start = time.perf_counter()
        interp.invoke()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def table_markdown(job, rows):
    """The comparison table; integer files get a line on where their bytes go (see
    ``keras_mnv2.deploy.tflite.size_breakdown``)."""
    names = METRICS[job]
    reference = next((r for r in rows if r["model"] == "TFLite float32"), None)
    timed = any(row.get("latency_ms") is not None for row in rows)
    head = ("| model | " + " | ".join(f"{n} x100" for n in names) + " | size (MB) |"
            + (" size / float32 |" if reference else "") + (" latency (ms, 1 thread) |"
                                                              if timed else ""))
    lines = [f"# {job}: float Keras vs TFLite", "", head,
             "|" + "---|" * (len(names) + 2 + bool(reference) + timed)]
    for row in rows:
        values = " | ".join("-" if row.get(n) is None else f"{100 * row[n]:.1f}" for n in names)
        line = f"| {row['model']} | {values} | {row['size_bytes'] / 1e6:.2f} |"
        if reference:
            line += (" - |" if row["model"].startswith("Keras")
                     else f" {row['size_bytes'] / reference['size_bytes']:.0%} |")
        if timed:
            line += (" - |" if row.get("latency_ms") is None else f" {row['latency_ms']:.2f} |")
        lines.append(line)
    notes = []
    float_weights = (reference or {}).get("size", {}).get("weights")
    for row in rows:
        size = row.get("size")
        if not size or not size.get("channels"):
            continue
        weights = f"weights {size['weights'] / 1e6:.2f} MB"
        if float_weights:
            weights += f" ({size['weights'] / float_weights:.0%} of the float32 weights)"
        notes.append(f"- {row['model']}: {weights}, quantization parameters "
                     f"{size['quantization'] / 1e6:.2f} MB ({size['channels']:,} per-channel "
                     f"scales and zero points: 12 bytes each in the TFLite schema), graph and "
                     f"metadata {size['other'] / 1e6:.2f} MB.")
    if notes:
        lines += ["", "Where the integer files' bytes go:", ""] + notes
    return "\n".join(lines) + "\n"


def write_table(job, rows, run_dir):
    """run_dir/deploy.md (printed), deploy.json and deploy.png (metric and size bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = table_markdown(job, rows)
    print(text, flush=True)
    from pipelines.manifest import write_atomic

    write_atomic(os.path.join(run_dir, "deploy.md"), text)
    write_atomic(os.path.join(run_dir, "deploy.json"), json.dumps(rows, indent=2))
    name = METRICS[job][0]
    labels = [r["model"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].bar(labels, [100 * (r.get(name) or 0) for r in rows], color="tab:blue")
    axes[0].set_ylabel(f"{name} x100")
    axes[1].bar(labels, [r["size_bytes"] / 1e6 for r in rows], color="tab:orange")
    axes[1].set_ylabel("file size (MB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    fig.suptitle(f"{job}: float Keras vs TFLite")
    fig.tight_layout()
    from pipelines.jobs.driver import _save_figure

    _save_figure(fig, os.path.join(run_dir, "deploy.png"), dpi=80)
    plt.close(fig)
