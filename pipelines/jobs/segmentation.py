"""The PASCAL VOC segmentation job: Mobile DeepLabv3 trained with the shared driver, scored by
mean IoU over a confusion matrix of the whole val split. ``keras-mnv2 train voc``.

With ``voc_dir`` (a VOCdevkit folder; add ``sbd_dir`` for ``train_aug``) it trains the paper
configuration; with neither it generates the embedded synthetic VOC-format dataset once and trains
the embedded default on it (see ``EMBEDDED``).
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from keras_mnv2.errors import InputError
from pipelines.jobs.training import EMBEDDED_COMMON

IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class VocRecipe:
    """Training recipe. PAPER follows DeepLabv3 (Chen et al. 2017, Sec. 4) as the MobileNetV2
    paper used it (Sec. 6.3): 513 crops, output stride 16, batch 16, momentum SGD 0.007 with the
    poly schedule (power 0.9) for 30K steps on train_aug, weight decay 4e-5, BN decay 0.9997,
    random scale 0.5-2.0 in steps of 0.25 and left-right flips."""

    alpha: float = 1.0  # width multiplier of the MobileNetV2 backbone
    crop_size: int = 513  # training crops (the training model's input side), pixels
    eval_size: int = 513  # val images are padded (label 255) to eval_size x eval_size
    output_stride: int = 16  # input side / feature side: 8 or 16 (dilated backbone)
    aspp: bool = True  # the three 3x3 atrous ASPP branches; else image pooling + 1x1 only
    dropout_rate: float = 0.1  # dropout after the head's projection
    batch_size: int = 16  # images per training step over all replicas (batch_size/replicas each)
    epochs: int = 46  # passes over the training split; 46: 30K steps of 16 on train_aug
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adam"
    learning_rate: float = 0.007  # the peak learning rate, for batch_size (any replica count)
    schedule: str = "poly"  # "poly" or "cosine"
    poly_power: float = 0.9  # poly only: (1 - step / steps) ** poly_power
    warmup_epochs: float = 0.0  # linear warmup to learning_rate (cosine only)
    weight_decay: float = 4e-5  # L2 on conv kernels (pipelines.jobs.weight_decay)
    bn_momentum: float = 0.9997  # batch-norm moving-average decay
    min_scale: float = 0.5  # random scaling of training images, smallest
    max_scale: float = 2.0  # random scaling of training images, largest
    scale_step: float = 0.25  # random scales in these steps; 0: any in [min_scale, max_scale]
    flip: bool = True  # random left-right flips of training images
    eval_scales: str = "1.0"  # evaluation scales, e.g. "0.5,0.75,1.0,1.25,1.5,1.75"
    eval_flip: bool = False  # evaluation also averages the flipped image's scores
    cache: bool = False  # keep decoded images in memory (small datasets only)
    skip_bad: bool = False  # skip and count bad examples instead of stopping with an error
    seed: int = 0  # data order, augmentation and initial weights


PAPER = VocRecipe()
# The embedded default: small and quick on 2 CPU cores (chosen by measurement, see
# docs/training/segmentation.md); ~750 steps. What the three jobs' embedded recipes share is
# training.EMBEDDED_COMMON.
EMBEDDED = VocRecipe(**EMBEDDED_COMMON, crop_size=128, eval_size=128, output_stride=8,
                     aspp=False, batch_size=16, epochs=12, learning_rate=2e-3, schedule="cosine",
                     warmup_epochs=0.5, min_scale=0.75, max_scale=1.5, scale_step=0.0)
SYNTHETIC = dict(num_train=1000, num_val=200, image_size=128, num_classes=5, seed=0, border=1)


def parse_scales(text):
    """"0.5,1.0,1.5" -> (0.5, 1.0, 1.5); every scale must be > 0."""
    try:
        scales = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise InputError(f"eval_scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise InputError(f"eval_scales must be positive numbers, got {text!r}")
    return scales


def check_recipe(recipe):
    """Raises ValueError for a recipe that cannot run (before any data is read): the checks of
    this job, then those every job shares (``training.check_recipe``)."""
    from pipelines.jobs import training

    if recipe.crop_size < 32 or recipe.eval_size < 32:
        raise InputError(f"crop_size and eval_size must be >= 32, got {recipe.crop_size}, "
                         f"{recipe.eval_size}")
    if recipe.output_stride not in (8, 16):
        raise InputError(f"output_stride must be 8 or 16, got {recipe.output_stride}")
    if recipe.optimizer not in ("sgd", "adam"):
        raise InputError(f"optimizer must be sgd or adam, got {recipe.optimizer!r}")
    if recipe.schedule not in ("poly", "cosine"):
        raise InputError(f"schedule must be poly or cosine, got {recipe.schedule!r}")
    if recipe.schedule == "poly" and recipe.warmup_epochs:
        raise InputError("warmup_epochs needs the cosine schedule")
    if not 0 < recipe.min_scale <= recipe.max_scale:
        raise InputError(f"need 0 < min_scale <= max_scale, got {recipe.min_scale}, "
                         f"{recipe.max_scale}")
    if recipe.batch_size < 1 or recipe.epochs < 1:
        raise InputError("batch_size and epochs must be >= 1")
    parse_scales(recipe.eval_scales)
    training.check_recipe(recipe)


def train_dataset(index, recipe, input_context=None, data_service=None, mask_dir=None):
    """Index -> decoded (cached if asked), shuffled, augmented, batched (image, label) pairs:
    float32 [B, crop, crop, 3] in [-1, 1] and int32 [B, crop, crop] with 255 = ignore.

    ``input_context`` (``tf.distribute.InputContext``): this input pipeline's share of the
    images and B = one replica's share of ``recipe.batch_size`` (``training.shard``,
    ``training.per_replica_batch``). ``data_service`` (a tf.data service dispatcher,
    "grpc://host:port"): the batches are made on the service's workers, each with its own
    order and augmentation; the masks are first converted to PNGs the workers read with
    TensorFlow ops alone, in ``mask_dir`` (``voc.graph_masks``; the workers need it at the same
    path)."""
    import tensorflow as tf

    from pipelines.data import seg_augment, voc
    from pipelines.jobs import training

    if data_service and not index.masks_in_graph:
        if mask_dir is None:
            raise InputError("a tf.data service needs mask_dir: a folder the service's workers "
                             "also see, for the masks converted to graph-readable PNGs")
        index = voc.graph_masks(index, mask_dir)
    seed = None if data_service else recipe.seed
    if recipe.cache:
        ds = training.shard(voc.voc_dataset(index), input_context).cache()
        ds = ds.shuffle(index.num_images, seed=seed, reshuffle_each_iteration=True)
    else:  # shuffling the file list is enough, and cheap
        ds = training.shard(voc.voc_dataset(index, shuffle=True, seed=seed), input_context)
    ds = tf.data.Dataset.zip((ds.repeat(), tf.data.Dataset.random(seed=seed).batch(2)))

    def prepare(element, seed):
        return seg_augment.train_preprocess(
            element["image"], element["label"], recipe.crop_size, recipe.min_scale,
            recipe.max_scale, recipe.scale_step, recipe.flip, seed=seed,
        )

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(training.per_replica_batch(recipe.batch_size, input_context),
                  drop_remainder=True)
    return training.service(ds, data_service).prefetch(tf.data.AUTOTUNE)


def eval_dataset(index, eval_size, batch_size):
    """Full val images padded to eval_size (label 255), batched: (image, label) pairs."""
    import tensorflow as tf

    from pipelines.data import seg_augment, voc

    def prepare(element):
        return seg_augment.eval_preprocess(element["image"], element["label"], eval_size,
                                           element["image_id"])

    ds = voc.voc_dataset(index).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_optimizer(recipe, steps_per_epoch):
    """The recipe's optimizer: momentum SGD or Adam, with the poly schedule (to 0) or warm-up
    and cosine decay to 1% of the peak."""
    import keras

    from pipelines.jobs import training

    total = max(1, recipe.epochs * steps_per_epoch)
    if recipe.schedule == "poly":
        schedule = keras.optimizers.schedules.PolynomialDecay(
            recipe.learning_rate, total, end_learning_rate=0.0, power=recipe.poly_power)
    else:
        warmup = int(recipe.warmup_epochs * steps_per_epoch)
        schedule = training.cosine_schedule(recipe.learning_rate, total, warmup, alpha=0.01)
    return training.make_optimizer(recipe.optimizer, schedule)


def build_model(recipe, num_classes, size, backbone_weights=None):
    """The recipe's DeepLabV3 with its weight decay (L2 on the conv kernels)."""
    from keras_mnv2.segmentation.deeplab import DeepLabV3
    from pipelines.jobs.weight_decay import add_weight_decay

    model = DeepLabV3(num_classes, alpha=recipe.alpha, input_shape=(size, size, 3),
                      output_stride=recipe.output_stride, aspp=recipe.aspp,
                      backbone_weights=backbone_weights, dropout_rate=recipe.dropout_rate,
                      bn_momentum=recipe.bn_momentum)
    return add_weight_decay(model, recipe.weight_decay)


def resized_model_builder(model, recipe, num_classes):
    """``size -> model``: the recipe's DeepLabV3 at another input size, with ``model``'s
    weights (DeepLabV3 has a static input size; multi-scale evaluation needs one per scale)."""
    cache = {int(model.input_shape[1]): model}

    def at_size(size):
        if size not in cache:
            other = build_model(recipe, num_classes, size)
            other.set_weights(model.get_weights())
            cache[size] = other
        return cache[size]

    return at_size


def scaled_size(size, scale):
    """Input side at ``scale`` (TF DeepLab's rule: (size - 1) * scale + 1, so 513 -> 257 at 0.5)."""
    return int((size - 1) * scale + 1)


def predict_probabilities(model, images, scales=(1.0,), flip=False, model_at_size=None):
    """Softmax probabilities [B, S, S, C] for padded images [B, S, S, 3], averaged over the
    scales (the image resized, the logits resized back) and, with ``flip``, the mirror images.

    The models run eagerly (``model(x, training=False)``): one pass over a val split does not
    repay tracing a predict function per input size and batch shape."""
    import keras
    import tensorflow as tf

    size = int(images.shape[1])
    total, count = 0.0, 0
    for scale in scales:
        side = scaled_size(size, scale)
        if side == size:
            net, x = model, images
        else:
            if model_at_size is None:
                raise InputError(
                    "multi-scale evaluation needs model_at_size (size -> model with the same "
                    "weights; see resized_model_builder): DeepLabV3 has a static input size"
                )
            net = model_at_size(side)
            x = tf.image.resize(images, [side, side], method="bilinear")
        for mirrored in ((False, True) if flip else (False,)):
            inputs = tf.reverse(x, [2]) if mirrored else x
            # numpy in and out: the model may run on JAX or torch (keras_mnv2 backends)
            logits = tf.convert_to_tensor(keras.ops.convert_to_numpy(
                net(inputs.numpy(), training=False)))
            if mirrored:
                logits = tf.reverse(logits, [2])
            if side != size:
                logits = tf.image.resize(logits, [size, size], method="bilinear")
            total += tf.nn.softmax(logits, axis=-1)
            count += 1
    return (total / count).numpy()


def evaluate(model, dataset, num_classes, scales=(1.0,), flip=False, model_at_size=None,
             class_names=None, ignore_label=IGNORE_LABEL):
    """Mean IoU of ``model`` over ``dataset`` (batches of (images [B, S, S, 3] in [-1, 1],
    labels [B, S, S] with ``ignore_label``), from one confusion matrix over all of it.

    ``scales``/``flip``: multi-scale and mirrored evaluation (averaged softmax); scales other
    than 1 need ``model_at_size``. Returns a dict: mean_iou, per_class_iou (by class name; None
    for a class absent from both labels and predictions), pixel_accuracy, num_images,
    confusion_matrix (rows: labels, columns: predictions).
    """
    from keras_mnv2.segmentation import confusion_matrix, iou_from_confusion

    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} classes")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    images_seen = 0
    for images, labels in dataset:
        probabilities = predict_probabilities(model, images, tuple(scales), flip, model_at_size)
        cm += confusion_matrix(labels, np.argmax(probabilities, axis=-1), num_classes,
                               ignore_label=ignore_label)
        images_seen += int(images.shape[0])
    if images_seen == 0:
        raise InputError("evaluation dataset is empty")
    mean_iou, per_class = iou_from_confusion(cm)
    total = cm.sum()
    return {
        "mean_iou": _finite_or_none(mean_iou),
        "per_class_iou": {name: _finite_or_none(v) for name, v in zip(names, per_class)},
        "pixel_accuracy": float(np.trace(cm) / total) if total else None,
        "num_images": images_seen,
        "eval_scales": list(scales),
        "eval_flip": bool(flip),
        "confusion_matrix": cm.tolist(),
    }


def _finite_or_none(value):
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _overlay(image, label, palette, alpha=0.55):
    colours = palette[label].astype(np.float32)
    out = image.astype(np.float32)
    painted = label != 0
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[painted]
    out[label == IGNORE_LABEL] = 255.0
    return out.astype(np.uint8)


def draw_predictions(model, index, eval_size, path, count=6):
    """PNG: val images, their true masks and the predicted masks overlaid (VOC colours; white:
    ignore). Predictions are made on the padded image and cropped back to it."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.data import seg_augment, voc

    palette = voc.voc_palette()
    examples = list(voc.voc_dataset(index).take(count))
    padded = np.stack([seg_augment.eval_preprocess(e["image"], e["label"], eval_size)[0]
                       for e in examples])
    # numpy out: the model may run on JAX or torch (keras_mnv2 backends)
    predictions = np.argmax(keras.ops.convert_to_numpy(model(padded, training=False)), axis=-1)
    rows = len(examples)
    fig, axes = plt.subplots(rows, 3, figsize=(3 * 3, 3 * rows), squeeze=False)
    for row, element, predicted in zip(axes, examples, predictions):
        image = element["image"].numpy()
        label = element["label"].numpy()[..., 0]
        predicted = predicted[:label.shape[0], :label.shape[1]]
        for ax, picture, title in zip(
            row, (image, _overlay(image, label, palette), _overlay(image, predicted, palette)),
            (element["image_id"].numpy().decode(), "true", "predicted"),
        ):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    from pipelines.jobs.driver import _save_figure

    _save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def _write_confusion(path, cm, class_names):
    """The confusion matrix as CSV: one row per true class, one column per predicted class."""
    import csv
    import io

    from pipelines.manifest import write_atomic

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted"] + list(class_names))
    for name, row in zip(class_names, cm):
        writer.writerow([name] + list(row))
    write_atomic(path, out.getvalue())


def dataset_class_names(voc_dir):
    """Class names from a ``manifest.json`` beside VOC2012 (the synthetic data), else VOC's."""
    from pipelines.data import voc

    root = voc.find_voc_root(voc_dir)
    for manifest in (root.parent / "manifest.json", root / "manifest.json"):
        try:
            names = json.loads(manifest.read_text()).get("class_names")
        except (OSError, ValueError, AttributeError):
            continue
        if names:
            return tuple(names)
    return voc.VOC_CLASSES


def load_data(recipe, voc_dir=None, sbd_dir=None, data_root="data/synthetic_voc",
              train_split=None, val_split="val"):
    """The train and val splits (``training.Data`` of VOC indexes), every val mask checked in
    full and the train masks' headers before any model is built; with no ``voc_dir`` the
    embedded synthetic dataset (generated in ``data_root`` if not there)."""
    from pipelines.data import voc
    from pipelines.jobs.training import Data
    from pipelines.synthetic import voc as synthetic_voc

    if voc_dir is None:
        print(f"No VOC given: using the embedded synthetic VOC-format dataset in {data_root}")
        synthetic_voc.generate(data_root, **SYNTHETIC)
        voc_dir = data_root
    class_names = dataset_class_names(voc_dir)
    train_split = train_split or ("train_aug" if sbd_dir is not None else "train")
    train = voc.load_voc(voc_dir, train_split, sbd_dir=sbd_dir, class_names=class_names,
                         skip_bad=recipe.skip_bad)
    val = voc.load_voc(voc_dir, val_split, class_names=class_names, skip_bad=recipe.skip_bad)
    voc.check_disjoint(train, val)
    # before any model is built: every val mask in full (a bad one would otherwise stop the run
    # after training, without metrics), the train masks' kind and size from their headers
    voc.check_examples(val, labels=True)
    voc.check_examples(train, labels=False)
    print(train.report())
    print(val.report())
    return Data(train, val, len(class_names), train.num_images, str(Path(voc_dir).resolve()),
                extra={"class_names": class_names, "train_split": train_split,
                       "val_split": val_split,
                       "sbd": str(Path(sbd_dir).resolve()) if sbd_dir is not None else None})


def evaluate_run(model, recipe, data, run_dir):
    """Mean IoU of the trained ``model`` on the val split (at ``eval_size``, the recipe's scales
    and flips), predictions.png and confusion_matrix.csv; the job's metrics."""
    num_classes, class_names = data.num_classes, data.extra["class_names"]
    train, val = data.train, data.val
    at_size = resized_model_builder(model, recipe, num_classes)
    eval_model = at_size(recipe.eval_size)
    results = evaluate(
        eval_model, eval_dataset(val, recipe.eval_size, recipe.batch_size), num_classes,
        scales=parse_scales(recipe.eval_scales), flip=recipe.eval_flip, model_at_size=at_size,
        class_names=class_names,
    )
    draw_predictions(eval_model, val, recipe.eval_size, os.path.join(run_dir, "predictions.png"))
    metrics = dict(results)
    _write_confusion(os.path.join(run_dir, "confusion_matrix.csv"),
                     metrics.pop("confusion_matrix"), class_names)
    metrics.update({
        "sbd": data.extra["sbd"],
        "train_split": data.extra["train_split"],
        "val_split": data.extra["val_split"],
        "class_names": list(class_names),
        "num_classes": num_classes,
        "params": int(model.count_params()),
        "train_images": train.num_images - train.skipped.skipped,  # actually used
        "val_images": results["num_images"],
        "skipped": {"train": train.skipped.skipped, "val": val.skipped.skipped,
                    "files": {**train.skipped.reasons, **val.skipped.reasons}},
    })
    return metrics


def run(voc_dir=None, sbd_dir=None, run_dir="runs/voc", recipe=None, backbone_weights=None,
        data_root="data/synthetic_voc", train_split=None, val_split="val", verbose="auto",
        init=None, freeze_bn=False, strategy=None, mixed_precision=False, data_service=None,
        jit_compile=None):
    """Trains and evaluates (``training.run_job``); returns the metrics dict (also written to
    run_dir/metrics.json).

    ``init`` (a .keras model, an official .tflite file or a TF checkpoint) starts the model from
    its weights where names and shapes match (``keras_mnv2.convert.init_from``; ``freeze_bn``
    freezes batch norm).

    ``train_split`` defaults to ``train_aug`` with ``sbd_dir``, else ``train``. ``strategy``
    (a name or a ``tf.distribute.Strategy``), ``mixed_precision`` and ``jit_compile``: see
    ``training.run_job``; ``data_service``: see ``train_dataset``.
    """
    from keras_mnv2.segmentation import MeanIoU, SegmentationLoss
    from pipelines.jobs import training

    embedded = voc_dir is None
    if embedded and sbd_dir is not None:
        raise InputError("sbd_dir needs voc_dir (SBD only adds masks to a VOCdevkit)")
    job = training.Job(
        check_recipe=check_recipe,
        load=lambda recipe: load_data(recipe, voc_dir, sbd_dir, data_root, train_split,
                                      val_split),
        build_model=lambda recipe, data: build_model(recipe, data.num_classes, recipe.crop_size,
                                                     backbone_weights),
        make_optimizer=make_optimizer,
        compile_args=lambda recipe, data: {
            "loss": SegmentationLoss(ignore_label=IGNORE_LABEL),
            "metrics": [MeanIoU(data.num_classes, ignore_label=IGNORE_LABEL)]},
        train_data=lambda model, recipe, data, steps, context: train_dataset(
            data.train, recipe, context, data_service,
            mask_dir=os.path.join(run_dir, "service_masks")),
        evaluate=lambda model, recipe, data, run_dir, nan: evaluate_run(model, recipe, data,
                                                                        run_dir),
        seed_weights=True,
    )
    return training.run_job(job, recipe or (EMBEDDED if embedded else PAPER), run_dir,
                            init=init, freeze_bn=freeze_bn, verbose=verbose, strategy=strategy,
                            mixed_precision=mixed_precision, jit_compile=jit_compile)
