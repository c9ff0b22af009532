"""COCO detection input: an index of a COCO-format folder, and tf.data pipelines over it or TFDS.

Every dataset here yields the same element::

    {"image":    uint8 [H, W, 3]   (RGB; grayscale images converted),
     "boxes":    float32 [M, 4]    normalized (ymin, xmin, ymax, xmax), clipped to [0, 1],
     "labels":   int32 [M]         contiguous 1..C (0 is reserved for background),
     "is_crowd": bool [M],
     "image_id": int64 scalar      (the COCO image id)}

Images without annotations are kept (M = 0). The contiguous labels are the categories sorted by
COCO id: ``CocoIndex.label_to_category`` maps them back for evaluation.
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_mnv2.errors import InputError, MissingFileError
from pipelines.data import decode
from pipelines.data.skips import SkipLog

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

# The 80 COCO 2017 detection category ids, sorted; TFDS ``coco/2017`` label l is id [l].
COCO2017_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


class CocoFormatError(InputError):
    """A COCO annotation file that cannot be read as detection annotations."""


@dataclass(repr=False)
class CocoIndex:
    """A COCO detection split: per-image files, sizes and normalized boxes, and the label maps.

    Arrays are flat over all kept boxes; image i owns rows ``box_starts[i]:box_starts[i+1]``.
    """

    annotation_file: Path
    image_dir: Path
    image_ids: np.ndarray  # int64 [N]
    file_names: list  # [N], relative to image_dir
    heights: np.ndarray  # int64 [N]
    widths: np.ndarray  # int64 [N]
    box_starts: np.ndarray  # int64 [N + 1]
    boxes: np.ndarray  # float32 [T, 4] normalized (ymin, xmin, ymax, xmax)
    labels: np.ndarray  # int32 [T], 1..C
    is_crowd: np.ndarray  # bool [T]
    category_ids: tuple  # sorted COCO category ids; label l is category_ids[l - 1]
    category_names: tuple  # names in the same order
    skipped_boxes: int  # annotations dropped for a zero or negative size (after clipping)
    skipped_images: SkipLog = field(default_factory=SkipLog)
    _coco: object = field(default=None, repr=False)
    _dataset: dict = field(default=None, repr=False)

    @property
    def num_images(self):
        return len(self.image_ids)

    @property
    def num_classes(self):
        """C, the number of object classes (labels 1..C; the model adds background 0)."""
        return len(self.category_ids)

    @property
    def label_to_category(self):
        return {label: cid for label, cid in enumerate(self.category_ids, start=1)}

    @property
    def category_to_label(self):
        return {cid: label for label, cid in enumerate(self.category_ids, start=1)}

    @property
    def label_names(self):
        """Names by contiguous label, with "background" at 0."""
        return ("background",) + tuple(self.category_names)

    @property
    def coco(self):
        """The ``pycocotools.coco.COCO`` object of the annotation file (for evaluation)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self._dataset
            _quietly(coco.createIndex)
            self._coco = coco
        return self._coco

    def __repr__(self):
        return f"CocoIndex({self.report()})"

    def image_path(self, i):
        return self.image_dir / self.file_names[i]

    def report(self):
        return (
            f"{self.annotation_file}: {self.num_images} images, {len(self.labels)} boxes, "
            f"{self.num_classes} classes; skipped {self.skipped_boxes} degenerate boxes and "
            f"{self.skipped_images.skipped} undecodable images or images not of the listed size"
        )


def _quietly(fn, *args):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _find_annotation_file(root, split):
    candidates = [root / "annotations" / f"instances_{split}.json"]
    if not split.endswith("2017"):
        candidates.append(root / "annotations" / f"instances_{split}2017.json")
    for path in candidates:
        if path.is_file():
            return path
    raise MissingFileError(
        f"no COCO annotation file for split {split!r}: tried "
        + ", ".join(str(p) for p in candidates)
    )


def _find_image_dir(root, split, annotation_file):
    candidates = [root / split]
    if not split.endswith("2017"):
        candidates.append(root / f"{split}2017")
    for path in candidates:
        if path.is_dir():
            return path
    raise MissingFileError(
        f"no image folder for {annotation_file}: tried "
        + ", ".join(str(p) for p in candidates)
        + " (pass image_dir=)"
    )


def load_coco(root_or_json, split=None, image_dir=None):
    """Reads a COCO detection split into a ``CocoIndex``.

    ``root_or_json`` is a dataset root holding ``annotations/instances_<split>.json`` (or
    ``instances_<split>2017.json``) and the image folder ``<split>`` (or ``<split>2017``), or an
    annotation file itself, whose images are looked for beside its ``annotations`` folder unless
    ``image_dir`` is given. Boxes with zero or negative size (after clipping to the image) are
    skipped and counted in ``skipped_boxes``; malformed entries raise ``CocoFormatError`` naming
    the file.
    """
    path = Path(root_or_json)
    if path.suffix == ".json":
        annotation_file = path
        if not annotation_file.is_file():
            raise MissingFileError(f"COCO annotation file not found: {annotation_file}")
        if split is None:
            stem = annotation_file.stem
            split = stem[len("instances_"):] if stem.startswith("instances_") else stem
        root = annotation_file.parent.parent
    else:
        if split is None:
            raise InputError("split is required when a dataset root is given")
        if not path.is_dir():
            raise MissingFileError(f"COCO dataset root not found: {path}")
        root = path
        annotation_file = _find_annotation_file(root, split)
    if image_dir is None:
        image_dir = _find_image_dir(root, split, annotation_file)
    else:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise MissingFileError(f"image folder for {annotation_file} not found: {image_dir}")

    try:
        with open(annotation_file) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{annotation_file}: not valid JSON ({e})") from None
    index = _build_index(dataset, annotation_file, image_dir)
    check_files(index)
    return index


def check_files(index):
    """Raises ``CocoFormatError`` naming the images ``index`` lists that are not in its image
    folder (found while indexing, before any model is built)."""
    missing = [name for name in index.file_names if not (index.image_dir / name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CocoFormatError(
            f"{index.annotation_file}: {len(missing)} of {index.num_images} listed images are "
            f"not in {index.image_dir} ({shown})")


def _build_index(dataset, annotation_file, image_dir):
    def fail(message):
        raise CocoFormatError(f"{annotation_file}: {message}")

    if not isinstance(dataset, dict):
        fail("the top level is not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            fail(f"missing or non-list {key!r}")

    names = {}
    for cat in dataset["categories"]:
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            fail(f"category without an integer id: {cat!r}")
        if cat["id"] in names:
            fail(f"duplicate category id {cat['id']}")
        names[cat["id"]] = str(cat.get("name", cat["id"]))
    category_ids = tuple(sorted(names))
    category_to_label = {cid: label for label, cid in enumerate(category_ids, start=1)}

    row = {}
    image_ids, file_names, heights, widths = [], [], [], []
    for img in dataset["images"]:
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            fail(f"image without an integer id: {img!r}")
        if img["id"] in row:
            fail(f"duplicate image id {img['id']}")
        if not isinstance(img.get("file_name"), str):
            fail(f"image {img['id']} has no file_name")
        for key in ("height", "width"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                fail(f"image {img['id']} has no positive integer {key}")
        row[img["id"]] = len(image_ids)
        image_ids.append(img["id"])
        file_names.append(img["file_name"])
        heights.append(img["height"])
        widths.append(img["width"])

    per_image = [[] for _ in image_ids]
    skipped = 0
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict):
            fail(f"annotation is not an object: {ann!r}")
        ann_id = ann.get("id", "?")
        if ann.get("image_id") not in row:
            fail(f"annotation {ann_id} refers to unknown image id {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_to_label:
            fail(f"annotation {ann_id} refers to unknown category id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_is_number(v) and math.isfinite(v) for v in bbox)
        ):
            fail(f"annotation {ann_id} has a malformed bbox {bbox!r} (want [x, y, w, h] numbers)")
        i = row[ann["image_id"]]
        h, w = heights[i], widths[i]
        x, y, bw, bh = (float(v) for v in bbox)
        box = np.clip([y / h, x / w, (y + bh) / h, (x + bw) / w], 0.0, 1.0)
        if box[2] <= box[0] or box[3] <= box[1]:
            skipped += 1
            continue
        crowd = ann.get("iscrowd", 0)
        per_image[i].append((box, category_to_label[ann["category_id"]], bool(crowd)))

    counts = np.array([len(p) for p in per_image], dtype=np.int64)
    flat = [b for p in per_image for b in p]
    boxes = np.array([b[0] for b in flat], dtype=np.float32).reshape(-1, 4)
    if skipped:
        log.warning("%s: skipped %d boxes with zero or negative size", annotation_file, skipped)
    if image_ids and not flat:
        log.warning("%s: no usable annotations (%d listed): every one of the %d images is "
                    "background only, so a model trained on it learns to detect nothing",
                    annotation_file, len(dataset["annotations"]), len(image_ids))
    return CocoIndex(
        annotation_file=Path(annotation_file),
        image_dir=Path(image_dir),
        image_ids=np.array(image_ids, dtype=np.int64),
        file_names=file_names,
        heights=np.array(heights, dtype=np.int64),
        widths=np.array(widths, dtype=np.int64),
        box_starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        boxes=boxes,
        labels=np.array([b[1] for b in flat], dtype=np.int32),
        is_crowd=np.array([b[2] for b in flat], dtype=bool),
        category_ids=category_ids,
        category_names=tuple(names[c] for c in category_ids),
        skipped_boxes=skipped,
        _dataset=dataset,
    )


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


SIZE_MISMATCH = ("skip", "stop")


def _size_mismatch_recorder(counter, annotation_file, on_mismatch):
    """A py_function body run only for images whose decoded size differs from their record:
    counted as skipped, or (``on_mismatch="stop"``) a ``CocoFormatError``."""

    def record(path, height, width, shape):
        name = path.numpy().decode()
        reason = (f"size {int(shape[1])}x{int(shape[0])} on disk but {int(width)}x{int(height)} "
                  f"in {annotation_file} (width x height; its boxes would be scaled wrongly)")
        if on_mismatch == "stop":
            raise CocoFormatError(f"{name}: {reason}")
        counter.add(name, reason)
        return False

    return record


def coco_dataset(
    source,
    split=None,
    *,
    image_dir=None,
    shuffle=False,
    seed=None,
    deterministic=True,
    num_parallel_calls=AUTOTUNE,
    size_mismatch="skip",
):
    """A ``tf.data.Dataset`` of COCO elements (see the module docstring) of one split.

    ``source`` is a ``CocoIndex`` or what ``load_coco`` takes. Undecodable images are skipped,
    logged and counted in ``index.skipped_images`` (``.skipped``, ``.files``); the index is also
    reachable as ``dataset.coco_index``. A missing image file is an error (TensorFlow's
    ``NotFoundError``, naming the file), not a skip; ``load_coco`` finds missing files first.
    An image whose decoded height and width differ from its record in the JSON (whose boxes
    would be normalized by the wrong size) is skipped and counted the same way, or, with
    ``size_mismatch="stop"``, stops the pipeline with a ``CocoFormatError`` naming it (wrapped
    in TensorFlow's ``InvalidArgumentError``). ``shuffle`` shuffles the image order (all images,
    with ``seed``, reshuffled each iteration); ``deterministic=False`` lets the parallel decode
    return images out of order for speed.
    """
    if size_mismatch not in SIZE_MISMATCH:
        raise InputError(f"size_mismatch must be 'skip' or 'stop', got {size_mismatch!r}")
    index = source if isinstance(source, CocoIndex) else load_coco(source, split, image_dir)
    n = index.num_images
    image_dir = str(index.image_dir)
    paths = [os.path.join(image_dir, f) for f in index.file_names]
    ragged = lambda values: tf.RaggedTensor.from_row_splits(values, index.box_starts)  # noqa: E731
    ds = tf.data.Dataset.from_tensor_slices({
        "path": tf.constant(paths, tf.string) if n else tf.zeros([0], tf.string),
        "image_id": tf.constant(index.image_ids, tf.int64),
        "height": tf.constant(index.heights, tf.int64),
        "width": tf.constant(index.widths, tf.int64),
        "boxes": ragged(tf.constant(index.boxes, tf.float32)),
        "labels": ragged(tf.constant(index.labels, tf.int32)),
        "is_crowd": ragged(tf.constant(index.is_crowd, tf.bool)),
    })
    if shuffle:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    record_mismatch = _size_mismatch_recorder(index.skipped_images, index.annotation_file.name,
                                              size_mismatch)

    def load(record):
        contents = tf.io.read_file(record["path"])
        image = decode.decode_or_empty(contents)
        ok = tf.size(image) > 0
        recorded = decode.record_skips(index.skipped_images,
                                       tf.where(ok, "", record["path"])[None], contents[None])
        with tf.control_dependencies([recorded]):
            ok = tf.identity(ok)
        shape = tf.cast(tf.shape(image)[:2], tf.int64)
        same_size = tf.reduce_all(tf.equal(shape, tf.stack([record["height"], record["width"]])))
        ok = tf.cond(
            tf.logical_or(tf.logical_not(ok), same_size),
            lambda: ok,
            lambda: tf.ensure_shape(tf.py_function(
                record_mismatch, [record["path"], record["height"], record["width"], shape],
                tf.bool), []),
        )
        return {
            "image": image,
            "boxes": tf.ensure_shape(record["boxes"], [None, 4]),
            "labels": record["labels"],
            "is_crowd": record["is_crowd"],
            "image_id": record["image_id"],
        }, ok

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    ds = ds.filter(_second).map(_first)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    ds.coco_index = index
    return ds


def _first(element, ok):
    return element


def _second(element, ok):
    return ok


def tfds_coco_dataset(split, data_dir=None, *, shuffle_files=False, read_config=None,
                      name="coco/2017"):
    """The same element contract from TFDS ``coco/2017`` (prepared beforehand; never downloads).

    TFDS boxes are already normalized (ymin, xmin, ymax, xmax); its labels are 0-based over the 80
    categories in id order, so label = TFDS label + 1 and ``COCO2017_CATEGORY_IDS[label - 1]`` is
    the COCO id (``tfds_label_to_category()``). Zero-size boxes are dropped.
    """
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=data_dir, download=False,
                   shuffle_files=shuffle_files, read_config=read_config)

    def convert(example):
        objects = example["objects"]
        # Equal lengths in real data; TFDS mock data draws each length on its own.
        m = tf.reduce_min([tf.shape(objects[k])[0] for k in ("bbox", "label", "is_crowd")])
        boxes = tf.clip_by_value(tf.cast(objects["bbox"][:m], tf.float32), 0.0, 1.0)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "image": tf.ensure_shape(example["image"], [None, None, 3]),
            "boxes": tf.reshape(tf.boolean_mask(boxes, keep), [-1, 4]),
            "labels": tf.boolean_mask(tf.cast(objects["label"][:m], tf.int32) + 1, keep),
            "is_crowd": tf.boolean_mask(tf.cast(objects["is_crowd"][:m], tf.bool), keep),
            "image_id": tf.cast(example["image/id"], tf.int64),
        }

    return ds.map(convert, num_parallel_calls=AUTOTUNE)


def tfds_label_to_category():
    """Contiguous label (1..80) of ``tfds_coco_dataset`` -> COCO 2017 category id."""
    return {label: cid for label, cid in enumerate(COCO2017_CATEGORY_IDS, start=1)}
