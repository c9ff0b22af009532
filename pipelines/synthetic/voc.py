"""A synthetic segmentation dataset written in the real PASCAL VOC 2012 on-disk format.

Layout (``root`` plays the VOCdevkit folder)::

    root/VOC2012/JPEGImages/2024_000001.jpg ...           (train ids 2024_*, val ids 2025_*)
    root/VOC2012/SegmentationClass/2024_000001.png ...    palette PNGs (mode "P", VOC palette)
    root/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    root/manifest.json          # the parameters; a matching manifest makes generate() a no-op

Each image is a textured, noisy background with 1-4 flat-coloured shapes of ``num_classes``
classes (the shapes and colour families of ``pipelines.synthetic.coco``), which may partly occlude
each other. The mask holds 0 for background, 1..num_classes for the shapes, and 255 (ignore) on a
band ``2 * border`` px wide along every boundary between labels, as VOC outlines its objects.

    python -m pipelines.synthetic.voc data/shapes_voc
"""

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.synthetic import coco as synthetic_coco
from pipelines.manifest import reuse_or_wipe, write_atomic, write_manifest
from pipelines.data.voc import IGNORE_LABEL, voc_palette

FORMAT_VERSION = 1
MAX_CLASSES = 5  # circle, square, triangle, cross, ring
SPLITS = {"train": "2024", "val": "2025"}  # split -> id prefix (a VOC-like "year")
MIN_SCALE, MAX_SCALE = 0.15, 0.6  # object side / image shorter side
MAX_OBJECTS = 4
MAX_COVER = 0.35  # at most this fraction of either box may lie under the other


def class_names(num_classes=MAX_CLASSES):
    """("background", "circle", ...) for the first ``num_classes`` shape classes."""
    return ("background",) + tuple(name for _, name, _ in synthetic_coco.CLASSES[:num_classes])


def generate(root, num_train=1000, num_val=200, image_size=128, num_classes=MAX_CLASSES, seed=0,
             border=1, jpeg_quality=90, min_scale=MIN_SCALE, max_scale=MAX_SCALE,
             max_objects=MAX_OBJECTS):
    """Writes the dataset under ``root`` unless a manifest with the same parameters is there.

    ``image_size`` is the longer image side; the shorter side is drawn per image from
    [0.75, 1] times it. ``border`` is the half width in px of the 255 band. Object sides are
    drawn log-uniformly from [``min_scale``, ``max_scale``] times the shorter side, 1 to
    ``max_objects`` objects an image. Returns ``root`` as a ``Path``.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    root = Path(root)
    params = {
        "format_version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "num_classes": int(num_classes),
        "seed": int(seed),
        "border": int(border),
        "jpeg_quality": int(jpeg_quality),
        "class_names": list(class_names(num_classes)),
    }
    if (min_scale, max_scale, max_objects) != (MIN_SCALE, MAX_SCALE, MAX_OBJECTS):
        # (only when changed: the manifests of datasets written before these existed still match)
        params.update(min_scale=float(min_scale), max_scale=float(max_scale),
                      max_objects=int(max_objects))
    voc = root / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    required = [f"VOC2012/ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "trainval")]
    if reuse_or_wipe(root, params, required, wipe=["VOC2012"]):
        return root
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", lists):
        folder.mkdir(parents=True, exist_ok=True)
    palette = voc_palette().tobytes()
    written = {}
    for split_number, (split, prefix) in enumerate(SPLITS.items()):
        ids = []
        for i in range(params[f"num_{split}"]):
            image_id = f"{prefix}_{i + 1:06d}"
            # One generator per image: the image depends only on (seed, split, index).
            rng = np.random.default_rng([seed, split_number, i])
            pixels, labels = render(rng, image_size, num_classes, border, min_scale, max_scale,
                                    max_objects)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg",
                                         quality=jpeg_quality)
            mask = Image.fromarray(labels)
            mask.putpalette(palette)  # mode "L" -> "P": the pixel values stay the labels
            mask.save(voc / "SegmentationClass" / f"{image_id}.png")
            ids.append(image_id)
        written[split] = ids
    for name, ids in (("train", written["train"]), ("val", written["val"]),
                      ("trainval", written["train"] + written["val"])):
        write_atomic(lists / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    write_manifest(root, params)
    return root


def void_band(labels, border):
    """``labels`` with 255 wherever a different label lies within ``border`` px (Chebyshev)."""
    if border == 0:
        return labels.copy()
    h, w = labels.shape
    padded = np.pad(labels, border, mode="edge")
    differs = np.zeros(labels.shape, dtype=bool)
    for dy in range(-border, border + 1):
        for dx in range(-border, border + 1):
            differs |= padded[border + dy:border + dy + h, border + dx:border + dx + w] != labels
    out = labels.copy()
    out[differs] = IGNORE_LABEL
    return out


def render(rng, image_size, num_classes, border=1, min_scale=MIN_SCALE, max_scale=MAX_SCALE,
           max_objects=MAX_OBJECTS):
    """One image (uint8 [H, W, 3]) and its mask (uint8 [H, W], 255 bands included)."""
    long_side = image_size
    short_side = int(round(image_size * rng.uniform(0.75, 1.0)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = synthetic_coco._background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    side = min(height, width)
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(num_classes))
        _, kind, base = synthetic_coco.CLASSES[cls]
        for _attempt in range(20):
            s = side * math.exp(rng.uniform(math.log(min_scale), math.log(max_scale)))
            aspect = math.exp(rng.uniform(-0.22, 0.22))
            w = min(width, max(6, int(round(s * aspect))))
            h = min(height, max(6, int(round(s / aspect))))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x, y, x + w, y + h)
            if all(synthetic_coco._cover(box, other) <= MAX_COVER for other in placed):
                break
        else:
            continue
        mask, _ = synthetic_coco._draw_shape(kind, w, h, rng)
        synthetic_coco._paint(canvas, mask, x, y, synthetic_coco._colour(rng, base))
        labels[y:y + h, x:x + w][mask > 0] = cls + 1  # later shapes occlude earlier ones
        placed.append(box)
    return canvas, void_band(labels, border)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Writes the synthetic shapes dataset (VOC).")
    parser.add_argument("root")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=MAX_CLASSES)
    parser.add_argument("--border", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.root, num_train=args.num_train, num_val=args.num_val,
                    image_size=args.image_size, num_classes=args.num_classes,
                    border=args.border, seed=args.seed)
    print(f"synthetic VOC dataset at {root}")


if __name__ == "__main__":
    main()
