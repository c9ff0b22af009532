"""PASCAL VOC 2012 segmentation input: an index of a VOCdevkit folder (optionally with the SBD
annotations for ``train_aug``), and a tf.data pipeline over it.

The on-disk layout read here is the VOCdevkit one::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNGs: the pixel values are labels
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

and, for ``train_aug``, the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011)::

    benchmark_RELEASE/dataset/cls/<id>.mat              GTcls.Segmentation, uint8 labels 0..20
    benchmark_RELEASE/dataset/{train,val}.txt

``train_aug`` is the usual 10,582-image training set of DeepLab: VOC train plus SBD train and val,
minus every image of VOC val. Where an image has a VOC mask it is used; the others take the SBD
mask.

Every dataset here yields::

    {"image":    uint8 [H, W, 3]  (RGB),
     "label":    uint8 [H, W, 1]  (class indices; 255 = ignore, the VOC object borders),
     "image_id": string scalar}

Masks are read as indices with PIL (a palette PNG is mode "P"; ``tf.io.decode_png`` would expand
the palette to RGB) in a ``tf.numpy_function``, which also checks each mask against its image: a
size mismatch, labels outside ``0..num_classes-1`` (other than 255), an unreadable image or mask
raise ``VocFormatError`` naming the file; a missing mask or image is found when the index is
built. With ``skip_bad=True`` such examples are instead skipped, logged and counted
(``index.skipped``), so a bad file is never silently scored.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_mnv2.errors import InputError, MissingFileError
from pipelines.data.skips import SkipLog

log = logging.getLogger(__name__)

IGNORE_LABEL = 255
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_TRAIN_AUG = 10582  # images in train_aug built from the full VOC 2012 and SBD releases
NUM_VOC_VAL = 1449


class VocFormatError(InputError):
    """A VOC or SBD file or list that cannot be used as segmentation ground truth."""


def voc_palette():
    """The VOC colour map: 256 RGB triples (uint8 [256, 3]); label 255 is (224, 224, 192).

    Label i's colour spreads the bits of i over the high bits of R, G and B in turn.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        c, rgb = label, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette[label] = rgb
    return palette


@dataclass(repr=False)
class VocIndex:
    """One split: per-example ids, image and mask paths (VOC PNG or SBD .mat), the classes."""

    root: Path  # the VOC2012 folder
    split: str
    ids: list
    image_paths: list
    mask_paths: list
    class_names: tuple = VOC_CLASSES
    skip_bad: bool = False
    skipped: SkipLog = field(default_factory=SkipLog)
    # every mask is a checked grayscale PNG of class indices (``graph_masks``): the dataset reads
    # it with TensorFlow ops alone, so a tf.data service worker in another process can run it
    masks_in_graph: bool = False

    @property
    def num_images(self):
        return len(self.ids)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def num_sbd_masks(self):
        return sum(p.endswith(".mat") for p in self.mask_paths)

    def report(self):
        return (
            f"{self.root} {self.split}: {self.num_images} images ({self.num_sbd_masks} with SBD "
            f"masks), {self.num_classes} classes; skipped {self.skipped.skipped} bad examples"
        )

    def __repr__(self):
        return f"VocIndex({self.report()})"


def _find_folder(given, nested, marker, what):
    """The first of ``given`` and ``given / n`` for n in ``nested`` that has the folder
    ``marker``; FileNotFoundError naming every path tried."""
    given = Path(given)
    candidates = [given] + [given / n for n in nested]
    for path in candidates:
        if (path / marker).is_dir():
            return path
    raise MissingFileError(f"no {what} (with {marker}/) at {given}: tried "
                            + ", ".join(str(p) for p in candidates))


def find_voc_root(voc_dir):
    """The VOC2012 folder of ``voc_dir`` (a VOCdevkit folder, its parent, or VOC2012 itself)."""
    return _find_folder(voc_dir, ("VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", "VOC2012 folder")


def find_sbd_root(sbd_dir):
    """The SBD ``dataset`` folder (holding cls/, train.txt, val.txt) of ``sbd_dir``."""
    return _find_folder(sbd_dir, ("dataset", "benchmark_RELEASE/dataset"), "cls",
                        "SBD dataset folder")


def read_ids(path):
    """Image ids of a list file, one per line, in order; duplicates and an empty list are errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"split list not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VocFormatError(f"{path}: the split list is empty")
    seen = set()
    for image_id in ids:
        if image_id in seen:
            raise VocFormatError(f"{path}: image id {image_id!r} is listed twice")
        seen.add(image_id)
    return ids


def split_ids(voc_root, split, sbd_dir=None):
    """The image ids of a split; ``train_aug`` needs ``sbd_dir``."""
    lists = Path(voc_root) / "ImageSets" / "Segmentation"
    if split != "train_aug":
        return read_ids(lists / f"{split}.txt")
    if sbd_dir is None:
        raise InputError("split 'train_aug' needs the SBD annotations (sbd_dir)")
    return train_aug_ids(voc_root, sbd_dir)


def train_aug_ids(voc_root, sbd_dir):
    """VOC train + SBD train + SBD val - VOC val, sorted (10,582 ids on the full releases)."""
    lists = Path(voc_root) / "ImageSets" / "Segmentation"
    sbd = find_sbd_root(sbd_dir)
    val = set(read_ids(lists / "val.txt"))
    pool = set(read_ids(lists / "train.txt"))
    pool.update(read_ids(sbd / "train.txt"))
    pool.update(read_ids(sbd / "val.txt"))
    ids = sorted(pool - val)
    overlap = set(ids) & val
    if overlap:  # by construction never; an explicit guard against an evaluation leak
        raise AssertionError(f"train_aug shares {len(overlap)} images with VOC val")
    if len(val) == NUM_VOC_VAL and len(ids) != NUM_TRAIN_AUG:
        log.warning("train_aug from %s and %s has %d images, not the usual %d: are the lists "
                    "complete?", voc_root, sbd, len(ids), NUM_TRAIN_AUG)
    return ids


def load_voc(voc_dir, split="train", sbd_dir=None, class_names=VOC_CLASSES, skip_bad=False):
    """Indexes one split of a VOCdevkit folder; see the module docstring.

    ``split`` is a list file name under ImageSets/Segmentation (``train``, ``val``,
    ``trainval``, ...) or ``train_aug`` (with ``sbd_dir``). With ``sbd_dir`` given, images without
    a VOC mask take the SBD one (and the SBD image where VOC lacks the JPEG). A missing image or
    mask raises ``FileNotFoundError`` naming the file, or with ``skip_bad`` is skipped and
    counted in ``index.skipped``.
    """
    root = find_voc_root(voc_dir)
    sbd = find_sbd_root(sbd_dir) if sbd_dir is not None else None
    if len(class_names) < 2 or len(class_names) > IGNORE_LABEL:
        raise InputError(f"need 2..255 class names, got {len(class_names)}")
    index = VocIndex(root=root, split=split, ids=[], image_paths=[], mask_paths=[],
                     class_names=tuple(class_names), skip_bad=skip_bad,
                     skipped=SkipLog(split))
    for image_id in split_ids(root, split, sbd):
        image = root / "JPEGImages" / f"{image_id}.jpg"
        mask = root / "SegmentationClass" / f"{image_id}.png"
        if sbd is not None:
            if not image.is_file() and (sbd / "img" / f"{image_id}.jpg").is_file():
                image = sbd / "img" / f"{image_id}.jpg"
            if not mask.is_file() and (sbd / "cls" / f"{image_id}.mat").is_file():
                mask = sbd / "cls" / f"{image_id}.mat"
        problem = None
        if not image.is_file():
            problem = (str(image), f"image {image_id!r} of split {split!r} not found")
        elif not mask.is_file():
            problem = (str(mask), f"mask of image {image_id!r} ({image}) not found")
        if problem is not None:
            if not skip_bad:
                raise MissingFileError(f"{problem[0]}: {problem[1]}")
            index.skipped.add(*problem)
            continue
        index.ids.append(image_id)
        index.image_paths.append(str(image))
        index.mask_paths.append(str(mask))
    if not index.ids:
        raise VocFormatError(f"{root} {split}: no usable examples")
    return index


def check_examples(index, labels=True):
    """Checks every mask of ``index`` against its image before any training: the mask's kind
    (palette or grayscale), its size against the image's (read from the headers), and with
    ``labels`` its class values (the whole mask is read). A problem raises ``VocFormatError``
    naming the file, or, with the index's ``skip_bad``, drops the example from the index and
    counts it in ``index.skipped``. Returns the number of examples dropped."""
    from PIL import Image

    keep, dropped = [], 0
    for i, (image_path, mask_path) in enumerate(zip(index.image_paths, index.mask_paths)):
        problem = None
        try:
            with Image.open(image_path) as im:
                width, height = im.size
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds
            problem = (image_path, f"cannot read image ({err})")
        if problem is None:
            try:
                if labels:
                    mask = read_mask(mask_path)
                    reason = mask_problem(mask, (height, width), index.num_classes)
                elif mask_path.endswith(".mat"):
                    reason = None  # no header to read cheaply: checked as the pipeline reads it
                else:
                    with Image.open(mask_path) as im:
                        if im.mode not in ("P", "L"):
                            raise VocFormatError(
                                f"{mask_path}: mask is a mode {im.mode!r} image; VOC masks are "
                                "palette (mode 'P') or grayscale PNGs whose pixel values are the "
                                "class indices")
                        mask_width, mask_height = im.size
                    reason = None if (mask_height, mask_width) == (height, width) else (
                        f"mask is {mask_height}x{mask_width} but its image is {height}x{width}")
                problem = None if reason is None else (mask_path, reason)
            except VocFormatError as err:
                problem = (mask_path, str(err).removeprefix(f"{mask_path}: "))
            except Exception as err:  # noqa: BLE001
                problem = (mask_path, f"cannot read mask ({err})")
        if problem is None:
            keep.append(i)
            continue
        if not index.skip_bad:
            raise VocFormatError(f"{problem[0]}: {problem[1]} (split {index.split!r}; "
                                 "--skip-bad skips and counts such examples)")
        index.skipped.add(*problem)
        dropped += 1
    if dropped:
        for name in ("ids", "image_paths", "mask_paths"):
            values = getattr(index, name)
            values[:] = [values[i] for i in keep]
        if not index.ids:
            raise VocFormatError(f"{index.root} {index.split}: no usable examples")
    return dropped


def check_disjoint(train, val):
    """Raises if two indexes share an image id (train on val would inflate every metric)."""
    shared = sorted(set(train.ids) & set(val.ids))
    if shared:
        raise InputError(
            f"splits {train.split!r} and {val.split!r} share {len(shared)} images "
            f"(e.g. {shared[:3]}): evaluation would be on training images"
        )


def read_mask(path):
    """A mask file as uint8 class indices [H, W]: a palette (mode "P") or grayscale PNG, or an
    SBD ``.mat`` file (``GTcls.Segmentation``). Raises ``VocFormatError`` naming the file."""
    path = str(path)
    if path.endswith(".mat"):
        return _read_sbd_mask(path)
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L"):
                raise VocFormatError(
                    f"{path}: mask is a mode {mode!r} image; VOC masks are palette (mode 'P') "
                    "or grayscale PNGs whose pixel values are the class indices"
                )
            return np.asarray(im, dtype=np.uint8)
    except VocFormatError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds; all mean "unreadable"
        raise VocFormatError(f"{path}: cannot read mask ({err})") from None


def _read_sbd_mask(path):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # noqa: BLE001
        raise VocFormatError(f"{path}: cannot read SBD .mat file ({err})") from None
    try:
        segmentation = mat["GTcls"]["Segmentation"][0, 0]
    except (KeyError, IndexError, ValueError) as err:
        raise VocFormatError(
            f"{path}: not an SBD class annotation (want the struct GTcls with a Segmentation "
            f"field; {err})"
        ) from None
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise VocFormatError(f"{path}: GTcls.Segmentation has shape {segmentation.shape}")
    return segmentation.astype(np.uint8)


def mask_problem(mask, image_shape, num_classes):
    """Why a mask cannot be ground truth for an image of ``image_shape``, or None."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if mask.shape != (height, width):
        return f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is {height}x{width}"
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        return (f"labels {bad.tolist()[:10]} outside the class range 0..{num_classes - 1} "
                f"(and {IGNORE_LABEL}, ignore)")
    return None


def load_example(image_path, mask_path, image_shape, num_classes, skipped=None):
    """Reads and checks one mask: (uint8 [H, W], True), or with ``skipped`` a (0x0, False) for a
    bad example after recording it. Raises ``VocFormatError`` naming the file otherwise."""
    if int(image_shape[0]) == 0:
        problem = (image_path, "cannot decode image")
    else:
        try:
            mask = read_mask(mask_path)
            reason = mask_problem(mask, image_shape, num_classes)
            problem = None if reason is None else (mask_path, reason)
        except VocFormatError as err:
            problem = (mask_path, str(err).removeprefix(f"{mask_path}: "))
    if problem is None:
        return mask, True
    if skipped is None:
        raise VocFormatError(f"{problem[0]}: {problem[1]}")
    skipped.add(*problem)
    return np.zeros((0, 0), np.uint8), False


def _image_shape(path):
    """(height, width) of an image file from its header, or (0, 0) where PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - unreadable: load_example names it
        return 0, 0


def graph_masks(index, folder):
    """``index`` with every mask checked and rewritten as a grayscale PNG of class indices in
    ``folder`` (``<id>.png``), read by TensorFlow ops alone.

    The usual dataset reads masks in Python (PIL for palette PNGs, scipy for SBD ``.mat``
    files), which a tf.data service worker in another process cannot run; the job converts the
    masks once, before handing its pipeline to the service (the workers need ``folder`` at the
    same path: a shared file system, as for the images). Each mask is checked against its image
    as ``voc_dataset`` does; a bad example raises ``VocFormatError`` naming the file, or with
    ``index.skip_bad`` is left out and counted. A mask already converted is kept (files are
    written whole, so a killed conversion resumes).
    """
    from PIL import Image

    from keras_mnv2.files import write_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skipped = index.skipped if index.skip_bad else None
    kept = ([], [], [])
    for image_id, image_path, mask_path in zip(index.ids, index.image_paths, index.mask_paths):
        target = folder / f"{Path(image_id).name}.png"
        if not target.is_file():
            mask, ok = load_example(image_path, mask_path, _image_shape(image_path),
                                    index.num_classes, skipped)
            if not ok:
                continue

            def save(f, mask=mask):
                Image.fromarray(mask).save(f, format="PNG")  # uint8 [H, W]: mode "L"

            write_file(str(target), save)
        for column, value in zip(kept, (image_id, image_path, str(target))):
            column.append(value)
    return VocIndex(index.root, index.split, *kept, class_names=index.class_names,
                    skip_bad=index.skip_bad, skipped=index.skipped, masks_in_graph=True)


def voc_dataset(source, split=None, *, sbd_dir=None, skip_bad=None, shuffle=False, seed=None,
                num_parallel_calls=None):
    """A ``tf.data.Dataset`` of the elements in the module docstring.

    ``source`` is a ``VocIndex`` or a VOCdevkit folder (then ``split`` is needed). ``skip_bad``
    defaults to the index's setting. Bad examples raise an error whose message names the file
    (``tf.errors.InvalidArgumentError`` wrapping ``VocFormatError``), or are skipped and counted
    in ``index.skipped``; the index is also ``dataset.voc_index``. ``num_parallel_calls``
    defaults to AUTOTUNE.
    """
    import tensorflow as tf

    from pipelines.data.decode import decode_or_empty

    if isinstance(source, VocIndex):
        index = source
    else:
        if split is None:
            raise InputError("split is required when a folder is given")
        index = load_voc(source, split, sbd_dir=sbd_dir, skip_bad=bool(skip_bad))
    skip = index.skip_bad if skip_bad is None else skip_bad
    skipped = index.skipped if skip else None
    num_classes = index.num_classes
    ds = tf.data.Dataset.from_tensor_slices({
        "image_path": tf.constant(index.image_paths),
        "mask_path": tf.constant(index.mask_paths),
        "image_id": tf.constant(index.ids),
    })
    if shuffle:
        ds = ds.shuffle(max(index.num_images, 1), seed=seed, reshuffle_each_iteration=True)

    def read(image_path, mask_path, shape):
        return load_example(image_path.decode(), mask_path.decode(), shape, num_classes, skipped)

    def load_in_graph(record):  # masks checked and converted by graph_masks
        return {
            "image": tf.io.decode_image(tf.io.read_file(record["image_path"]), channels=3,
                                        expand_animations=False),
            "label": tf.io.decode_png(tf.io.read_file(record["mask_path"]), channels=1),
            "image_id": record["image_id"],
        }

    if index.masks_in_graph:
        ds = ds.map(load_in_graph, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
                    deterministic=True)
        ds.voc_index = index
        return ds

    def load(record):
        image = decode_or_empty(tf.io.read_file(record["image_path"]))
        label, ok = tf.numpy_function(
            read, [record["image_path"], record["mask_path"], tf.shape(image)],
            [tf.uint8, tf.bool], stateful=False,
        )
        return {
            "image": image,
            "label": tf.expand_dims(tf.ensure_shape(label, [None, None]), -1),
            "image_id": record["image_id"],
            "ok": tf.ensure_shape(ok, []),
        }

    ds = ds.map(load, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.filter(lambda e: e["ok"])
    ds = ds.map(lambda e: {k: v for k, v in e.items() if k != "ok"})
    ds.voc_index = index
    return ds
