"""The COCO detection job: SSDLite-MobileNetV2 trained with the shared driver, evaluated with
pycocotools. ``keras-mnv2 train coco`` / ``make train-coco``.

With ``--coco-dir`` (a COCO-format directory) or ``--tfds-data-dir`` it trains the paper
configuration; with neither it generates the embedded synthetic COCO-format dataset once and
trains the embedded default on it (see ``EMBEDDED``).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from pipelines.jobs.training import EMBEDDED_COMMON

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class CocoRecipe:
    """Training recipe. PAPER follows the TF Object Detection API ssdlite_mobilenet_v2_coco config
    (320 px, batch 24, RMSProp 0.004 momentum 0.9 decay 0.9, L2 4e-5, 3:1 hard negatives).
    ``weight_decay`` is the shared rule of ``pipelines.jobs.weight_decay`` (L2 on conv kernels)."""

    alpha: float = 1.0  # width multiplier of the MobileNetV2 backbone
    input_size: int = 320  # the model's input side in pixels
    batch_size: int = 24  # images per training step over all replicas (batch_size/replicas each)
    epochs: int = 100  # passes over the training split
    optimizer: str = "rmsprop"  # rmsprop (momentum 0.9, decay 0.9), adam or sgd (momentum 0.9)
    learning_rate: float = 0.004  # peak (after warmup) for batch_size; cosine decay to 1% of it
    warmup_epochs: float = 1.0  # linear warmup to learning_rate
    weight_decay: float = 4e-5  # L2 on conv kernels (pipelines.jobs.weight_decay)
    class_loss: str = "softmax"  # "softmax" (3:1 hard negatives) or "focal"
    # "smooth_l1" (on the box encodings, as the paper) or "giou" (1 - GIoU of the decoded boxes);
    # the model and its export are the same either way
    box_loss: str = "smooth_l1"
    background_prior: float = 0.99  # background probability the class predictors start at
    bn_momentum: float = 0.999  # batch-norm moving-average decay
    augment: str = "ssd"  # "ssd" (crop, expand, flip, photometric) or "flip"
    cache: bool = False  # keep decoded images in memory (small datasets only)
    score_threshold: float = 0.01  # detections scoring less are dropped before NMS
    nms_iou: float = 0.6  # NMS drops a box whose IoU with a higher-scoring one is above this
    max_detections: int = 100  # boxes kept per image
    seed: int = 0  # data order and augmentation
    # an image whose decoded size differs from its JSON record: "skip" (and count) or "stop"
    size_mismatch: str = "skip"


PAPER = CocoRecipe()
# The embedded default: small and quick on 2 CPU cores (chosen by measurement, see
# docs/training/detection.md); 992 steps. The GIoU box loss gave 0.03-0.04 more AP than smooth L1
# at each of 3 seeds in the same steps, AP50 within the run-to-run spread; 16 epochs instead of
# 12 gave 0.02-0.09 more AP50 and 0.02-0.10 more AP at each of the same seeds. What the three
# jobs' embedded recipes share is training.EMBEDDED_COMMON.
EMBEDDED = CocoRecipe(**EMBEDDED_COMMON, input_size=160, batch_size=32, epochs=16,
                      learning_rate=3e-3, warmup_epochs=0.5, augment="flip", box_loss="giou")
SYNTHETIC = dict(num_train=2000, num_val=250, image_size=256, num_classes=5, seed=0)


def check_recipe(recipe):
    """Raises ValueError, naming the field and its allowed values, for a recipe that cannot run
    (before any data is read)."""
    from keras_mnv2.detection.losses import BOX_LOSSES, MODES
    from pipelines.jobs import training

    training.check_recipe(recipe, ranges={
        "input_size": "[64, inf)", "background_prior": "(0, 1)", "score_threshold": "[0, 1]",
        "nms_iou": "(0, 1]", "max_detections": "[1, inf)",
    }, choices={
        "class_loss": MODES, "box_loss": BOX_LOSSES, "augment": ("ssd", "flip"),
        "size_mismatch": ("skip", "stop"),
    })


def _encode(anchors):
    """(image, element) -> (image, SSD targets), for one image or for a batch of images whose
    boxes are padded with label-0 rows (``encode_targets`` takes either)."""
    from keras_mnv2.detection.matching import encode_targets

    anchors = tf.constant(anchors)

    def encode(image, element):
        box_targets, class_targets = encode_targets(
            element["boxes"], element["labels"], anchors, is_crowd=element["is_crowd"]
        )
        labels = tf.cast(class_targets, tf.float32)[..., None]
        return image, {"boxes": tf.concat([box_targets, labels], axis=-1),
                       "classes": class_targets}

    return encode


def train_dataset(source, recipe, anchors, input_context=None, data_service=None):
    """Source elements -> augmented, target-encoded, batched (image, targets) pairs.

    ``input_context`` (``tf.distribute.InputContext``): this input pipeline's share of the
    images, in batches of one replica's share of ``recipe.batch_size`` (``training.shard``,
    ``training.per_replica_batch``). ``data_service`` (a tf.data service dispatcher,
    "grpc://host:port"): the batches are made on the service's workers, each with its own
    order."""
    from pipelines.data import augment
    from pipelines.jobs import training

    source = training.shard(source, input_context)
    ds = source.cache() if recipe.cache else source
    ds = ds.shuffle(1024, seed=None if data_service else recipe.seed,
                    reshuffle_each_iteration=True)
    size = recipe.input_size

    def prepare(element):
        if recipe.augment == "ssd":
            element = augment.ssd_train_augment(element, size)
        else:
            element = augment.random_flip(element)
            element = augment.eval_preprocess(element, size)
        return element["image"], {key: element[key] for key in ("boxes", "labels", "is_crowd")}

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE)
    # Targets are encoded a batch at a time, its boxes padded with label-0 rows (zeros, False):
    # the same targets as image by image, at a fraction of the cost in the cores that the
    # training step shares (docs/benchmarks.md, "Training step profile").
    ds = ds.repeat().padded_batch(training.per_replica_batch(recipe.batch_size, input_context),
                                  drop_remainder=True)
    ds = ds.map(_encode(anchors), num_parallel_calls=AUTOTUNE)
    return training.service(ds, data_service).prefetch(AUTOTUNE)


def eval_dataset(source, recipe):
    from pipelines.data import augment

    def prepare(element):
        element = augment.eval_preprocess(element, recipe.input_size)
        return element["image"], element["image_id"]

    return source.map(prepare, num_parallel_calls=AUTOTUNE).batch(recipe.batch_size)


def build_model(recipe, num_classes, backbone_weights=None):
    """The recipe's SSDLite with its weight decay (L2 on the conv kernels)."""
    from keras_mnv2.detection.ssdlite import SSDLite
    from pipelines.jobs.weight_decay import add_weight_decay

    model = SSDLite(num_classes, alpha=recipe.alpha, input_size=recipe.input_size,
                    backbone_weights=backbone_weights, background_prior=recipe.background_prior,
                    bn_momentum=recipe.bn_momentum)
    return add_weight_decay(model, recipe.weight_decay)


def make_optimizer(recipe, steps_per_epoch):
    """The recipe's optimizer: warm-up, then cosine decay to 1% of the peak (RMSProp as
    TF-slim: rho 0.9, momentum 0.9, epsilon 1.0)."""
    from pipelines.jobs import training

    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    schedule = training.cosine_schedule(recipe.learning_rate, total, warmup, alpha=0.01)
    return training.make_optimizer(recipe.optimizer, schedule)


def predict_detections(model, dataset, anchors, recipe):
    """Runs the model and decodes with class-wise NMS: a list of per-image detection dicts."""
    import keras

    from keras_mnv2.detection.postprocess import decode_detections

    detections = []
    for images, image_ids in dataset:
        outputs = model(images.numpy(), training=False)  # numpy: any Keras backend
        decoded = decode_detections(
            outputs["boxes"], outputs["classes"], anchors,
            score_threshold=recipe.score_threshold, iou_threshold=recipe.nms_iou,
            max_detections=recipe.max_detections, mode=recipe.class_loss,
        )
        decoded = {k: keras.ops.convert_to_numpy(v) for k, v in decoded.items()}
        for i, image_id in enumerate(image_ids.numpy()):
            n = int(decoded["num_detections"][i])
            detections.append({
                "image_id": int(image_id),
                "boxes": decoded["boxes"][i, :n],
                "scores": decoded["scores"][i, :n],
                "classes": decoded["classes"][i, :n],
            })
    return detections


def draw_detections(dataset_source, detections, path, label_names, count=8, min_score=0.3):
    """PNG grid of val images: predicted boxes (green, with class and score), true boxes (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    by_id = {d["image_id"]: d for d in detections}
    cols = 4
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, element in zip(axes.flat, dataset_source.take(count)):
        image = element["image"].numpy()
        h, w = image.shape[:2]
        ax.imshow(image)
        ax.axis("off")
        for box in element["boxes"].numpy():
            ax.add_patch(Rectangle((box[1] * w, box[0] * h), (box[3] - box[1]) * w,
                                   (box[2] - box[0]) * h, fill=False, color="red", lw=1.5))
        found = by_id.get(int(element["image_id"]))
        if found is None:
            continue
        for box, score, label in zip(found["boxes"], found["scores"], found["classes"]):
            if score < min_score:
                continue
            ax.add_patch(Rectangle((box[1] * w, box[0] * h), (box[3] - box[1]) * w,
                                   (box[2] - box[0]) * h, fill=False, color="lime", lw=1.5))
            ax.text(box[1] * w, box[0] * h, f"{label_names.get(int(label), label)} {score:.2f}",
                    color="black", backgroundcolor="lime", fontsize=6)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.suptitle("val: predicted (green) vs true (red)")
    fig.tight_layout()
    from pipelines.jobs.driver import _save_figure

    _save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


@dataclasses.dataclass
class GroundTruth:
    """What evaluation needs of a split: a pycocotools COCO and the label -> category id map."""

    coco: object
    label_to_category: dict


def ground_truth_from_dataset(source, label_to_category):
    """Builds pycocotools ground truth from dataset elements (for TFDS, which has no JSON file)."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    for element in source.as_numpy_iterator():
        h, w = element["image"].shape[:2]
        image_id = int(element["image_id"])
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        for box, label, crowd in zip(element["boxes"], element["labels"], element["is_crowd"]):
            bw, bh = float(box[3] - box[1]) * w, float(box[2] - box[0]) * h
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "iscrowd": int(crowd),
                "category_id": int(label_to_category[int(label)]), "area": bw * bh,
                "bbox": [float(box[1]) * w, float(box[0]) * h, bw, bh],
            })
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": str(c)} for c in label_to_category.values()]}
    gt.createIndex()
    return GroundTruth(gt, dict(label_to_category))


def load_data(recipe, coco_dir=None, tfds_data_dir=None, data_root="data/synthetic_coco",
              train_split="train", val_split="val"):
    """The train and val splits (``training.Data``): a COCO-format directory, TFDS coco/2017,
    or with neither the embedded synthetic dataset (generated in ``data_root`` if not there)."""
    from pipelines.data import coco
    from pipelines.jobs.training import Data
    from pipelines.synthetic import coco as synthetic_coco

    if coco_dir is None and tfds_data_dir is None:
        print(f"No COCO given: using the embedded synthetic COCO-format dataset in {data_root}")
        synthetic_coco.generate(data_root, **SYNTHETIC)
        coco_dir = data_root
    if tfds_data_dir is not None:
        train_source = coco.tfds_coco_dataset("train", data_dir=tfds_data_dir)
        val_source = coco.tfds_coco_dataset("validation", data_dir=tfds_data_dir)
        val = ground_truth_from_dataset(val_source, coco.tfds_label_to_category())
        import tensorflow_datasets as tfds

        info = tfds.builder("coco/2017", data_dir=tfds_data_dir).info
        num_classes, num_train, skipped = 80, info.splits["train"].num_examples, None
    else:
        train = coco.load_coco(coco_dir, train_split)
        val = coco.load_coco(coco_dir, val_split)
        print(train.report())
        print(val.report())
        for index in (train, val):
            if index.num_images == 0:
                raise coco.CocoFormatError(f"{index.annotation_file}: lists no images")
        num_classes, num_train = train.num_classes, train.num_images
        train_source = coco.coco_dataset(train, size_mismatch=recipe.size_mismatch)
        val_source = coco.coco_dataset(val, size_mismatch=recipe.size_mismatch)
        skipped = (train.skipped_images, val.skipped_images)
    origin = os.path.abspath(coco_dir) if coco_dir else f"tfds:{tfds_data_dir}"
    return Data(train_source, val_source, num_classes, num_train, origin,
                extra={"ground_truth": val, "skipped": skipped})


def evaluate(model, recipe, data, run_dir):
    """COCO mAP of ``model`` on the val split (pycocotools; detections_val.json) and
    detections.png; the job's metrics."""
    from pipelines.data import coco_eval

    anchors = model.anchors
    val, skipped = data.extra["ground_truth"], data.extra["skipped"]
    detections = predict_detections(model, eval_dataset(data.val, recipe), anchors, recipe)
    stats = coco_eval.coco_evaluate(
        val.coco, detections, val.label_to_category,
        results_path=os.path.join(run_dir, "detections_val.json"),
    )
    label_names = {label: val.coco.cats[cat]["name"]
                   for label, cat in val.label_to_category.items() if cat in val.coco.cats}
    draw_detections(data.val, detections, os.path.join(run_dir, "detections.png"), label_names)
    metrics = dict(stats)
    metrics.update({
        # images actually used: those listed, less those skipped (undecodable, size mismatch)
        "train_images": data.num_train - (skipped[0].skipped if skipped else 0),
        "val_images": len(detections),
        "skipped_images": {"train": skipped[0].skipped, "val": skipped[1].skipped}
        if skipped else None,
    })
    return metrics


def losses(recipe):
    """The recipe's SSD losses (``keras_mnv2.detection.losses.ssd_losses``); the GIoU box loss
    decodes with the anchors ``build_model`` gives the model (``ssdlite_anchors``)."""
    from keras_mnv2.detection.losses import ssd_losses
    from keras_mnv2.detection.ssdlite import ssdlite_anchors

    return ssd_losses(box_loss=recipe.box_loss, anchors=ssdlite_anchors(recipe.input_size),
                      mode=recipe.class_loss)


def run(coco_dir=None, tfds_data_dir=None, run_dir="runs/coco", recipe=None,
        backbone_weights=None, data_root="data/synthetic_coco", train_split="train",
        val_split="val", verbose="auto", init=None, freeze_bn=False, extra_callbacks=(),
        strategy=None, mixed_precision=False, data_service=None, jit_compile=None):
    """Trains and evaluates (``training.run_job``); returns the metrics dict (also written to
    run_dir/metrics.json).

    ``init`` (a .keras model, an official .tflite file or a TF checkpoint) starts the model from
    its weights where names and shapes match (``keras_mnv2.convert.init_from``; ``freeze_bn``
    freezes batch norm). ``extra_callbacks`` go to ``fit`` after the driver's own (the peer
    benchmark times training with one). ``strategy`` (a name or a ``tf.distribute.Strategy``),
    ``mixed_precision`` and ``jit_compile``: see ``training.run_job``; ``data_service``: see
    ``train_dataset``."""
    from pipelines.jobs import training

    embedded = coco_dir is None and tfds_data_dir is None
    job = training.Job(
        check_recipe=check_recipe,
        load=lambda recipe: load_data(recipe, coco_dir, tfds_data_dir, data_root, train_split,
                                      val_split),
        build_model=lambda recipe, data: build_model(recipe, data.num_classes,
                                                     backbone_weights),
        make_optimizer=make_optimizer,
        compile_args=lambda recipe, data: {"loss": losses(recipe)},
        train_data=lambda model, recipe, data, steps, context: train_dataset(
            data.train, recipe, model.anchors, context, data_service),
        evaluate=lambda model, recipe, data, run_dir, nan: evaluate(model, recipe, data,
                                                                    run_dir),
    )
    return training.run_job(job, recipe or (EMBEDDED if embedded else PAPER), run_dir,
                            init=init, freeze_bn=freeze_bn, verbose=verbose,
                            callbacks=extra_callbacks, strategy=strategy,
                            mixed_precision=mixed_precision, jit_compile=jit_compile)
