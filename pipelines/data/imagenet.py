"""ImageNet input: three sources with one element contract, and Inception-style preprocessing.

Sources (each returns a ``Source``; ``source.dataset()`` is one pass over the split):

- ``tfds_source``: TFDS ``imagenet2012`` (``data_dir``; ``manual_dir`` holding the ILSVRC tars
  builds it the first time).
- ``folder_source``: the ImageNet folder layout, ``train/<wnid>/*.JPEG``, and ``val/`` either in
  class folders or flat with a labels file (Kaggle ``LOC_val_solution.csv``, TFDS-style
  ``validation_labels.txt`` or ``<file> <wnid or label>`` lines).
- ``tfrecord_source``: TF-slim / Inception shards (``image/encoded``, ``image/class/label``
  counting from 1, 0 being the background class of ``build_imagenet_data.py``).

Element contract, every source::

    {"encoded": tf.string []   the file's bytes, not decoded,
     "label":   tf.int32 []    0 .. num_classes - 1 (wnids sorted, as TFDS and keras.applications),
     "name":    tf.string []   the file's path or name, for reports}

Bytes stay encoded until the map so that the training crop decodes only the pixels it keeps
(``tf.image.decode_and_crop_jpeg``).

Preprocessing (Szegedy et al. 2015, "Going deeper with convolutions", section 6; TF-slim
``inception_preprocessing``): training takes a random crop of 8%-100% of the image area with
aspect ratio 3/4-4/3, decoded fused with the crop, a random horizontal flip, a bilinear resize to
the model's resolution; evaluation takes the centred square of 87.5% of the shorter side. Pixels
end in [-1, 1], as MobileNetV2 expects.

Odd files: CMYK and grayscale JPEGs decode to RGB (libjpeg converts, ``channels=3``); bytes that
are not JPEG (ImageNet has a PNG named .JPEG) fall back to ``tf.io.decode_image``; a JPEG
without its end-of-image marker (truncated) is decoded in full, so that it fails every time
rather than only when a crop reaches its missing part. Files that still do not decode are
skipped and recorded in a ``skips.SkipLog`` (counted and named; ``classification.SkipReport``
prints them at the end of each epoch) by the mechanism the three readers share
(``decode.attempt_each``, ``decode.record_skips``).
"""

import csv
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from keras_mnv2.errors import InputError, MissingFileError
from pipelines.data.decode import attempt_each, decode_image, record_skips
from pipelines.data.skips import SkipLog

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_FRACTION = 0.875
# ILSVRC2012 sizes, for the standard TF-slim / Inception shard names.
STANDARD_SHARDS = {
    ("train", 1024): 1_281_167,
    ("validation", 128): 50_000,
}


class DatasetError(InputError):
    """A dataset on disk that cannot be read as an ImageNet split."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One split of a dataset: its classes, its size and how to read it.

    ``dataset(shuffle, seed, input_context)`` gives one pass over the split as elements of the
    contract above; ``input_context`` (a ``tf.distribute.InputContext``) keeps this input
    pipeline's shard only.
    """

    origin: str
    class_names: tuple
    num_examples: Optional[int]
    make: Callable = dataclasses.field(repr=False, compare=False)
    # classes with no image in this split (folder layout), warned about when read
    empty_classes: tuple = dataclasses.field(default=(), compare=False)

    @property
    def num_classes(self):
        return len(self.class_names)

    def dataset(self, shuffle=False, seed=None, input_context=None):
        return self.make(shuffle, seed, input_context)


# ----------------------------------------------------------------------------- sources


def folder_source(root, split="train", labels_file=None, class_names=None):
    """A split of the ImageNet folder layout under ``root``.

    ``root/<split>/<wnid>/*.JPEG`` (class folders) or ``root/<split>/*.JPEG`` with a labels file:
    ``labels_file``, else the first of ``root/LOC_<split>_solution.csv``,
    ``root/<split>_labels.txt``, ``root/<split>/labels.txt`` that exists (for ``val`` also
    ``root/LOC_val_solution.csv`` and ``root/validation_labels.txt``). Classes are, unless given,
    the sorted class folders of ``root/train`` (else ``root/LOC_synset_mapping.txt``, else the
    split's own folders); label i is ``class_names[i]``.
    """
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise MissingFileError(f"no {split}/ folder in {root}")
    subdirs = sorted(e.name for e in os.scandir(folder)
                     if e.is_dir() and not e.name.startswith("."))
    class_names = tuple(class_names) if class_names is not None else _class_names(root, subdirs)
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    empty = ()
    if subdirs:
        for sub in subdirs:
            if sub not in index:
                raise DatasetError(f"{folder / sub}: class folder not among the "
                                   f"{len(class_names)} classes (first: {class_names[:3]})")
            files = _images_in(folder / sub)
            paths += files
            labels += [index[sub]] * len(files)
        # a class without images can never be learned (train) or scored (val): say which
        used = {class_names[i] for i in set(labels)}
        empty = tuple(name for name in class_names if name not in used)
        if empty and paths:
            shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
            log.warning("%s: %d of %d classes have no images (%s): %s", folder, len(empty),
                        len(class_names), "never learned" if split == "train" else "not scored",
                        shown)
    else:
        files = _images_in(folder)
        path = _find_labels_file(root, split, labels_file)
        by_name = _read_labels_file(path, [os.path.basename(f) for f in files], index)
        unlabeled = []
        for f in files:
            name = os.path.basename(f)
            label = by_name.get(name, by_name.get(os.path.splitext(name)[0]))
            if label is None:
                unlabeled.append(name)
            else:
                paths.append(f)
                labels.append(label)
        if unlabeled:
            raise DatasetError(f"{path}: no label for {len(unlabeled)} images of {folder} "
                               f"(first: {unlabeled[:3]})")
        listed = len(by_name) - len(paths)
        if listed > 0:
            log.warning("%s lists %d images that are not in %s", path, listed, folder)
    if not paths:
        raise DatasetError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in {folder}")
    paths = np.asarray([os.fsencode(p) for p in paths])  # bytes: 1 byte a character, not 4
    labels = np.asarray(labels, np.int32)

    def make(shuffle, seed, input_context):
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if shuffle:  # the whole file list: cheap, and better than any buffer
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return ds.map(_read_file, num_parallel_calls=AUTOTUNE)

    return Source(f"folder:{folder}", class_names, len(paths), make, empty_classes=empty)


def _read_file(path, label):
    return {"encoded": tf.io.read_file(path), "label": label, "name": path}


def _images_in(folder):
    return sorted(e.path for e in os.scandir(folder)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _class_names(root, subdirs):
    train = root / "train"
    if train.is_dir():
        names = sorted(e.name for e in os.scandir(train)
                       if e.is_dir() and not e.name.startswith("."))
        if names:
            return tuple(names)
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        return tuple(line.split()[0] for line in mapping.read_text().splitlines() if line.strip())
    if subdirs:
        return tuple(subdirs)
    raise DatasetError(f"cannot tell the classes of {root}: give train/<wnid>/ folders, "
                       "a LOC_synset_mapping.txt, or class_names")


def _find_labels_file(root, split, labels_file):
    if labels_file is not None:
        if not os.path.isfile(labels_file):
            raise MissingFileError(f"labels file not found: {labels_file}")
        return Path(labels_file)
    candidates = [root / f"LOC_{split}_solution.csv", root / f"{split}_labels.txt",
                  root / split / "labels.txt"]
    if split in ("val", "validation"):
        candidates += [root / "LOC_val_solution.csv", root / "validation_labels.txt",
                       root / "val_labels.txt"]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"{root / split} holds images but no class folders and no labels file "
                       f"(looked for {', '.join(p.name for p in candidates)}); "
                       "pass labels_file")


def _read_labels_file(path, file_names, index):
    """{file name or stem: label} from a labels file (formats in ``folder_source``)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: empty labels file")

    def label_of(token, where):
        if token in index:
            return index[token]
        if token.isdigit() and int(token) < len(index):
            return int(token)
        raise DatasetError(f"{where}: {token!r} is neither one of the {len(index)} class "
                           f"wnids nor a label in 0..{len(index) - 1}")

    if lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):  # Kaggle
        result = {}
        with open(path, newline="") as f:
            for row_number, row in enumerate(csv.reader(f), start=1):
                if row_number == 1 or not row:
                    continue
                if len(row) < 2 or not row[1].split():
                    raise DatasetError(f"{path}:{row_number}: expected ImageId,PredictionString")
                result[row[0]] = label_of(row[1].split()[0], f"{path}:{row_number}")
        return result
    rows = [re.split(r"[\s,]+", line) for line in lines]
    if all(len(r) == 1 for r in rows):  # one label per image, in sorted file name order
        if all(r[0].isdigit() for r in rows):
            raise DatasetError(
                f"{path}: integer labels in file order look like the devkit's "
                "ILSVRC2012_validation_ground_truth.txt, whose ids are not in wnid order; "
                "use a wnid per line (TFDS validation_labels.txt) or '<file> <wnid>' lines")
        if len(rows) != len(file_names):
            raise DatasetError(f"{path}: {len(rows)} labels for {len(file_names)} images; a "
                               "one-label-per-line file needs one line per image")
        return {name: label_of(r[0], f"{path}:{i + 1}")
                for i, (name, r) in enumerate(zip(sorted(file_names), rows))}
    result = {}
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise DatasetError(f"{path}:{i + 1}: expected '<file name> <wnid or label>'")
        result[os.path.basename(r[0])] = label_of(r[1], f"{path}:{i + 1}")
    return result


def tfrecord_source(files, num_classes=1000, label_offset=1, num_examples=None,
                    class_names=None, cycle_length=16):
    """TF-slim / Inception TFRecord shards (a glob pattern or a list of files).

    Records hold ``image/encoded`` (JPEG bytes), ``image/class/label`` (int64) and optionally
    ``image/filename``; label = stored label - ``label_offset`` (1 for the TF-slim and
    ``build_imagenet_data.py`` shards, whose 0 is a background class). ``num_examples``
    defaults to the ILSVRC2012 size for the standard shard names (``train-*-of-01024``,
    ``validation-*-of-00128``), else to a count of the records.
    """
    if isinstance(files, (str, os.PathLike)):
        pattern = os.fspath(files)
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise MissingFileError(f"no TFRecord files match {pattern}")
    files = [os.fspath(f) for f in files]
    for f in files:
        if not tf.io.gfile.exists(f):
            raise MissingFileError(f"TFRecord file not found: {f}")
    if class_names is None:
        class_names = tfds_class_names() if num_classes == 1000 else tuple(
            str(i) for i in range(num_classes))
    if len(class_names) != num_classes:
        raise InputError(f"{len(class_names)} class_names for num_classes={num_classes}")
    if num_examples is None:
        num_examples = _standard_size(files)
    if num_examples is None:
        num_examples = sum(1 for _ in tf.data.TFRecordDataset(files))
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        label = example["image/class/label"] - label_offset
        check = tf.debugging.Assert(
            tf.logical_and(label >= 0, label < num_classes),
            ["TFRecord label out of range (check label_offset; TF-slim shards count from 1):",
             example["image/class/label"], example["image/filename"]])
        with tf.control_dependencies([check]):
            label = tf.cast(label, tf.int32)
        return {"encoded": example["image/encoded"], "label": label,
                "name": example["image/filename"]}

    def make(shuffle, seed, input_context):
        ds = tf.data.Dataset.from_tensor_slices(files)
        shard_records = False
        if input_context is not None:
            if len(files) >= input_context.num_input_pipelines:
                ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            else:
                shard_records = True
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
                           cycle_length=min(cycle_length, len(files)),
                           num_parallel_calls=AUTOTUNE)
        if shard_records:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds.map(parse, num_parallel_calls=AUTOTUNE)

    return Source(f"tfrecord:{os.path.dirname(files[0])}/{os.path.basename(files[0])}...",
                  tuple(class_names), num_examples, make)


def _standard_size(files):
    names = [os.path.basename(f) for f in files]
    match = re.fullmatch(r"(train|validation)-\d{5}-of-(\d{5})", names[0])
    if not match:
        return None
    key = (match.group(1), int(match.group(2)))
    if key in STANDARD_SHARDS and len(files) == key[1]:
        return STANDARD_SHARDS[key]
    return None


def tfds_class_names():
    """The 1000 ILSVRC2012 wnids in label order (sorted), from tensorflow-datasets."""
    import tensorflow_datasets as tfds

    path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    with open(path) as f:
        return tuple(line.strip() for line in f if line.strip())


def _importlib_resources_shim():
    """TFDS 4.9 uses the ``importlib_resources`` backport for builders with manual downloads
    but requires it only below Python 3.9; the standard library's module serves."""
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import importlib.resources.abc  # noqa: F401
        import sys

        sys.modules["importlib_resources"] = importlib.resources


def tfds_source(split="train", data_dir=None, manual_dir=None):
    """A split of TFDS ``imagenet2012`` ("train" or "validation"/"val"), read without decoding.

    Not yet prepared in ``data_dir``, it is built from ``manual_dir`` (the folder holding
    ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar); without ``manual_dir`` that is an error
    saying so.
    """
    import tensorflow_datasets as tfds

    _importlib_resources_shim()
    split = {"val": "validation"}.get(split, split)
    if split not in ("train", "validation"):
        raise InputError(f"split must be 'train' or 'validation', got {split!r} (the test "
                         "split has no labels)")
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if not builder.is_prepared():
        if manual_dir is None:
            raise MissingFileError(
                f"TFDS imagenet2012 is not prepared in {builder.data_dir}; pass manual_dir "
                "(the folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar) "
                "to build it")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    info = builder.info
    if split not in info.splits:
        raise DatasetError(f"TFDS imagenet2012 in {builder.data_dir} has no {split} split "
                           f"(it has {list(info.splits)})")

    def make(shuffle, seed, input_context):
        read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=input_context,
                                      try_autocache=False)
        ds = builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config,
                                decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(lambda e: {"encoded": e["image"], "label": tf.cast(e["label"], tf.int32),
                                 "name": e["file_name"]}, num_parallel_calls=AUTOTUNE)

    return Source(f"tfds:imagenet2012/{split}@{builder.data_dir}",
                  tuple(info.features["label"].names), info.splits[split].num_examples, make)


# ----------------------------------------------------------------------------- decoding


def _is_jpeg(encoded):
    return tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")


def _is_complete_jpeg(encoded):
    """A JPEG ending in its end-of-image marker; a truncated one does not."""
    return tf.logical_and(
        tf.logical_and(tf.strings.length(encoded) > 4, _is_jpeg(encoded)),
        tf.equal(tf.strings.substr(encoded, -2, 2), b"\xff\xd9"))


def decode_and_random_crop(encoded, seed, area_range=AREA_RANGE, aspect_range=ASPECT_RANGE,
                           max_attempts=10, fused=True):
    """An Inception random crop, uint8 [h, w, 3]; ``seed`` is a [2] int tensor.

    The window covers ``area_range`` of the image area with aspect in ``aspect_range`` (the whole
    image if no window fits in ``max_attempts``). ``fused`` decodes only the window of a JPEG
    (``decode_and_crop_jpeg``); otherwise, and for other formats, the whole image is decoded and
    then cropped (the plain reference).
    """

    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
            aspect_ratio_range=aspect_range, area_range=area_range,
            max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
        return begin, size

    def fused_crop():
        begin, size = window(tf.image.extract_jpeg_shape(encoded))
        crop = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(encoded, crop, channels=3)

    def full_crop():
        image = decode_image(encoded)
        begin, size = window(tf.shape(image))
        return tf.slice(image, begin, tf.stack([size[0], size[1], 3]))

    if not fused:
        return full_crop()
    return tf.cond(_is_complete_jpeg(encoded), fused_crop, full_crop)


def decode_and_center_crop(encoded, fraction=CROP_FRACTION, fused=True):
    """The centred square of ``fraction`` of the shorter side, uint8 [s, s, 3]."""

    def window(shape):
        h, w = shape[0], shape[1]
        side = tf.maximum(1, tf.cast(fraction * tf.cast(tf.minimum(h, w), tf.float32), tf.int32))
        return (h - side + 1) // 2, (w - side + 1) // 2, side

    def fused_crop():
        y, x, side = window(tf.image.extract_jpeg_shape(encoded))
        return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, side, side]), channels=3)

    def full_crop():
        image = decode_image(encoded)
        y, x, side = window(tf.shape(image))
        return image[y:y + side, x:x + side]

    if not fused:
        return full_crop()
    return tf.cond(_is_complete_jpeg(encoded), fused_crop, full_crop)


def to_model_range(image):
    """uint8-range pixels to [-1, 1] (MobileNetV2's input scaling)."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def train_preprocess(encoded, seed, image_size, area_range=AREA_RANGE, aspect_range=ASPECT_RANGE,
                     fused=True):
    """Random crop, random flip, resize: float32 [image_size, image_size, 3] in [-1, 1]."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = decode_and_random_crop(encoded, crop_seed, area_range, aspect_range, fused=fused)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image / 127.5 - 1.0


def eval_preprocess(encoded, image_size, crop_fraction=CROP_FRACTION, fused=True):
    """Centre crop and resize: float32 [image_size, image_size, 3] in [-1, 1]."""
    image = decode_and_center_crop(encoded, crop_fraction, fused=fused)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return image / 127.5 - 1.0


GROUP = 16  # images decoded per attempt_each call


# ----------------------------------------------------------------------------- pipelines


def _first(a, b):
    return a


def _second(a, b):
    return b


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return options


def train_dataset(source, batch_size, image_size, *, seed=None, deterministic=False, cache=False,
                  shuffle_buffer=10_000, area_range=AREA_RANGE, aspect_range=ASPECT_RANGE,
                  fused=True, data_service=None, skip_log=None, input_context=None, repeat=True,
                  drop_remainder=True):
    """Batches ``(images float32 [B, S, S, 3] in [-1, 1], labels int32 [B])`` for training.

    Shuffled files, a shuffle buffer of encoded images, parallel fused decode-and-crop, batching
    and prefetch. ``cache`` keeps the encoded bytes in memory (True) or in files at that path
    prefix (a str) after the first pass. ``deterministic`` (with ``seed``, default 0 then) gives
    the same batches on every run. ``data_service`` ("grpc://host:port" of a tf.data service
    dispatcher) runs everything up to batching on the service's workers (processing mode
    "parallel_epochs": each worker reads the whole split in its own random order, so ``seed``
    is ignored there). With ``input_context`` the batch is that replica's share of the global
    ``batch_size``. ``fused=False`` decodes whole images before cropping (the benchmark's
    reference).

    Undecodable images are dropped before batching; each kept image carries the names of those
    dropped just before it, and the client side hands them to ``skip_log`` (created if None;
    it is then ``dataset.skip_log``), so the count is right with remote workers too. Without
    ``repeat``, one empty row (label -1) closes each pass to carry the names of skips after the
    last kept image, and the rows of a partial last batch are named before it is dropped, so
    every pass counts every skip; the row is removed again on the client side.
    """
    if data_service and deterministic:
        raise InputError("deterministic=True and data_service do not mix: the service's workers "
                         "interleave their batches in arrival order")
    if data_service:
        seed = None  # each worker draws its own order and crops ("parallel_epochs")
    if deterministic and seed is None:
        seed = 0
    skip_log = skip_log if skip_log is not None else SkipLog("train")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if cache:
        ds = source.dataset(shuffle=False, input_context=input_context)
        ds = ds.cache(cache if isinstance(cache, str) else "")
        buffer = source.num_examples or shuffle_buffer  # cached: the whole split fits
    else:
        ds = source.dataset(shuffle=True, seed=seed, input_context=input_context)
        buffer = shuffle_buffer
    ds = ds.shuffle(max(1, buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # one [2] seed per image for the stateless crop and flip: the same batches for a fixed seed,
    # whatever the parallelism
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).batch(GROUP)

    def prepare(element, pairs):
        images, ok = attempt_each(
            lambda e, s: train_preprocess(e, s, image_size, area_range, aspect_range, fused),
            (element["encoded"], pairs))
        return images, element["label"], ok, element["name"]

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE).unbatch()
    if not repeat:  # the closing row, kept by the filter below: label -1, no image
        ds = ds.concatenate(tf.data.Dataset.from_tensors((
            tf.zeros([image_size, image_size, 3], tf.float32), tf.constant(-1, tf.int32),
            tf.constant(True), tf.constant(""))))

    def carry(state, element):
        image, label, ok, name = element
        count, names = state
        out = (image, label, count, names)
        new_state = tf.cond(ok, lambda: (tf.constant(0), tf.constant("")),
                            lambda: (count + 1, tf.strings.join([names, name], "\n")))
        return new_state, (out, ok)

    ds = ds.scan((tf.constant(0), tf.constant("")), carry)
    ds = ds.filter(_second).map(_first)
    # Without repeat, the partial last batch is dropped only after its names are recorded.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder and repeat,
                  num_parallel_calls=AUTOTUNE)
    ds = ds.with_options(_options(deterministic))
    if data_service:
        ds = ds.apply(tf.data.experimental.service.distribute(
            processing_mode="parallel_epochs", service=data_service))

    def record(images, labels, counts, names):
        names = tf.strings.split(tf.boolean_mask(names, counts > 0), "\n").flat_values
        with tf.control_dependencies([record_skips(skip_log, names)]):
            images = tf.identity(images)
        if not repeat:  # remove the closing row
            real = labels >= 0
            images, labels = tf.boolean_mask(images, real), tf.boolean_mask(labels, real)
        return images, labels

    ds = ds.map(record)
    if not repeat:  # no empty batch (the closing row alone), no partial one with drop_remainder
        least = batch_size if drop_remainder else 1
        ds = ds.filter(lambda images, labels: tf.shape(labels)[0] >= least)
    if not repeat and drop_remainder:
        ds = ds.map(lambda images, labels: (
            tf.ensure_shape(images, [batch_size, image_size, image_size, 3]),
            tf.ensure_shape(labels, [batch_size])))
    ds = ds.prefetch(AUTOTUNE)
    ds.skip_log = skip_log
    return ds


def eval_dataset(source, batch_size, image_size, *, crop_fraction=CROP_FRACTION, cache=False,
                 skip_log=None, input_context=None, fused=True, pad=False):
    """Batches ``(images, labels, weights)`` over the whole split, in order, the last batch
    partial. An undecodable image keeps its slot as a zeros image of weight 0 (so nothing is
    dropped unseen) and is named to ``skip_log`` (created if None; then ``dataset.skip_log``).
    ``pad`` fills the last batch up with zero-weight zeros images (for Keras under a
    multi-replica strategy, where a replica left with no image fails).
    """
    skip_log = skip_log if skip_log is not None else SkipLog("val")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = source.dataset(shuffle=False, input_context=input_context)
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")

    def prepare(element):
        images, ok = attempt_each(
            lambda e: eval_preprocess(e, image_size, crop_fraction, fused), (element["encoded"],))
        return images, element["label"], tf.cast(ok, tf.float32), element["name"]

    ds = ds.batch(GROUP).map(prepare, num_parallel_calls=AUTOTUNE).unbatch()
    if source.num_examples and input_context is None:  # every slot kept: the size is known
        ds = ds.apply(tf.data.experimental.assert_cardinality(source.num_examples))
    ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE).with_options(_options(True))

    def record(images, labels, weights, names):
        with tf.control_dependencies([record_skips(
                skip_log, tf.boolean_mask(names, tf.equal(weights, 0)))]):
            images = tf.identity(images)
        if pad:  # padding rows have no name, so they are not counted as skipped
            missing = batch_size - tf.shape(labels)[0]
            images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
            labels, weights = tf.pad(labels, [[0, missing]]), tf.pad(weights, [[0, missing]])
            images = tf.ensure_shape(images, [batch_size, image_size, image_size, 3])
        return images, labels, weights

    ds = ds.map(record).prefetch(AUTOTUNE)
    ds.skip_log = skip_log
    return ds
