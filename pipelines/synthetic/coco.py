"""A synthetic detection dataset written in the real COCO on-disk format.

Layout (as COCO 2017, with split folders named after the split)::

    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/train/000000000001.jpg ...
    root/val/000001000001.jpg ...
    root/manifest.json            # the parameters; a matching manifest makes generate() a no-op

Each image is a textured, noisy background with 0-6 flat-coloured shapes (one shape and one
colour family per class, colour jittered) whose sides span ~8% to ~60% of the image's shorter
side, sometimes overlapping. A few images hold a crowd: a tight group of small shapes of one class
annotated as a single ``iscrowd=1`` region with an uncompressed RLE mask, as COCO annotates crowds.
Category ids are deliberately not contiguous (1, 3, 7, 10, 12, ...), so a reader has to map them.

    python -m pipelines.synthetic.coco data/shapes_coco
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.manifest import reuse_or_wipe, write_atomic, write_manifest

FORMAT_VERSION = 1

# (category id, name, base RGB colour); deliberately non-contiguous ids, as in COCO.
CLASSES = (
    (1, "circle", (220, 40, 40)),
    (3, "square", (40, 180, 60)),
    (7, "triangle", (50, 80, 230)),
    (10, "cross", (235, 205, 30)),
    (12, "ring", (200, 50, 210)),
    (15, "diamond", (30, 200, 210)),
    (18, "star", (250, 130, 20)),
    (21, "bar", (120, 70, 30)),
)
MAX_CLASSES = len(CLASSES)

SPLIT_ID_OFFSET = {"train": 0, "val": 1_000_000}  # image and annotation ids unique across splits
MIN_SCALE, MAX_SCALE = 0.08, 0.6  # object side / image shorter side
MAX_OBJECTS = 6
EMPTY_FRACTION = 0.08  # images with no objects at all
CROWD_FRACTION = 0.06  # images holding one crowd region
MAX_COVER = 0.3  # at most this fraction of either box may lie under the other: no hidden objects


def generate(
    root,
    num_train=2000,
    num_val=250,
    image_size=256,
    seed=0,
    num_classes=5,
    jpeg_quality=90,
    min_scale=MIN_SCALE,
    max_objects=MAX_OBJECTS,
    crowd_fraction=CROWD_FRACTION,
):
    """Writes the dataset under ``root`` unless a manifest with the same parameters is there.

    ``image_size`` is the longer image side in pixels; the shorter side is drawn per image from
    [0.75, 1] times it, so images are not all square. ``min_scale`` (object side / shorter image
    side, up to ``MAX_SCALE``), ``max_objects`` (per image) and ``crowd_fraction`` (images with a
    crowd region) make an easier set for short runs: e.g. ``min_scale=0.3, max_objects=3,
    crowd_fraction=0`` (few, large objects). Returns the root as a ``Path``.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if not 0 < min_scale <= MAX_SCALE:
        raise ValueError(f"min_scale must be in (0, {MAX_SCALE}], got {min_scale!r}")
    if isinstance(max_objects, bool) or int(max_objects) != max_objects or max_objects < 0:
        raise ValueError(f"max_objects must be an int >= 0, got {max_objects!r}")
    if not 0 <= crowd_fraction <= 1:
        raise ValueError(f"crowd_fraction must be in [0, 1], got {crowd_fraction!r}")
    root = Path(root)
    params = {
        "format_version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
        "num_classes": int(num_classes),
        "jpeg_quality": int(jpeg_quality),
    }
    # recorded only when changed: a default dataset keeps the manifest it had before these existed
    for key, value, default in (("min_scale", float(min_scale), MIN_SCALE),
                                ("max_objects", int(max_objects), MAX_OBJECTS),
                                ("crowd_fraction", float(crowd_fraction), CROWD_FRACTION)):
        if value != default:
            params[key] = value
    required = [f"annotations/instances_{split}.json" for split in SPLIT_ID_OFFSET]
    if reuse_or_wipe(root, params, required, wipe=SPLIT_ID_OFFSET):
        return root
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        dataset = _write_split(root, split, count, params)
        write_atomic(root / "annotations" / f"instances_{split}.json",
                     json.dumps(dataset, separators=(",", ":")))
    write_manifest(root, params)
    return root


def categories(num_classes=5):
    """The COCO ``categories`` list of the first ``num_classes`` shape classes."""
    return [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, name, _ in CLASSES[:num_classes]
    ]


def _write_split(root, split, count, params):
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    offset = SPLIT_ID_OFFSET[split]
    images, annotations = [], []
    for i in range(count):
        image_id = offset + i + 1
        # One generator per image: the image depends only on (seed, split, index).
        rng = np.random.default_rng([params["seed"], list(SPLIT_ID_OFFSET).index(split), i])
        pixels, objects = _render(rng, params["image_size"], params["num_classes"],
                                  params.get("min_scale", MIN_SCALE),
                                  params.get("max_objects", MAX_OBJECTS),
                                  params.get("crowd_fraction", CROWD_FRACTION))
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(folder / file_name, quality=params["jpeg_quality"])
        height, width = pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            obj.update(id=offset + len(annotations) + 1, image_id=image_id)
            annotations.append(obj)
    return {
        "info": {
            "description": "keras_mnv2 synthetic shapes in COCO format",
            "version": str(FORMAT_VERSION),
            "year": 2024,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(params["num_classes"]),
    }


def _background(rng, height, width):
    """Low-saturation gradient, a few faint stripes and per-pixel noise."""
    base = rng.uniform(50, 190) + rng.uniform(-18, 18, size=3)
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
    gy, gx = rng.uniform(-30, 30, size=(2, 1, 1, 3)).astype(np.float32)
    img = base.astype(np.float32) + gy * ys + gx * xs
    freq, phase, angle = rng.uniform(2, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripes = np.sin(freq * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
    img = img + rng.uniform(0, 14) * stripes
    img = img + rng.normal(0, rng.uniform(4, 14), size=(height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygons(kind, w, h, rng):
    """Outline polygons of one shape in a w x h box, as lists of (x, y) in local pixels."""

    def ellipse(rx, ry, n=32):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return list(zip(w / 2 + rx * np.cos(t), h / 2 + ry * np.sin(t)))

    if kind in ("circle", "ring"):
        return [ellipse(w / 2, h / 2)]
    if kind == "square":
        return [[(0, 0), (w, 0), (w, h), (0, h)]]
    if kind == "triangle":
        apex = rng.uniform(0.3, 0.7) * w
        return [[(apex, 0), (w, h), (0, h)]]
    if kind == "cross":
        a, b = 0.34, 0.66
        return [[(a * w, 0), (b * w, 0), (b * w, a * h), (w, a * h), (w, b * h), (b * w, b * h),
                 (b * w, h), (a * w, h), (a * w, b * h), (0, b * h), (0, a * h), (a * w, a * h)]]
    if kind == "diamond":
        return [[(w / 2, 0), (w, h / 2), (w / 2, h), (0, h / 2)]]
    if kind == "star":
        t = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [list(zip(w / 2 + r * w / 2 * np.cos(t), h / 2 + r * h / 2 * np.sin(t)))]
    if kind == "bar":  # a thin, wide horizontal bar
        return [[(0, 0.3 * h), (w, 0.3 * h), (w, 0.7 * h), (0, 0.7 * h)]]
    raise ValueError(kind)


def _draw_shape(kind, w, h, rng):
    """A binary mask (uint8 0/1, h x w) and the outline polygons of one shape."""
    polygons = _shape_polygons(kind, w, h, rng)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if kind in ("circle", "ring"):
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
        if kind == "ring":
            t = 0.22
            draw.ellipse([t * w, t * h, (1 - t) * w - 1, (1 - t) * h - 1], fill=0)
    else:
        for poly in polygons:
            draw.polygon([(min(x, w - 1), min(y, h - 1)) for x, y in poly], fill=1)
    return np.asarray(mask, dtype=np.uint8), polygons


def _colour(rng, base):
    return tuple(int(c) for c in np.clip(np.asarray(base) + rng.integers(-28, 29, size=3), 0, 255))


def _cover(a, b):
    """The larger of the fractions of [x0, y0, x1, y1] boxes a and b lying inside the other."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _paint(canvas, mask, x, y, colour):
    h, w = mask.shape
    region = canvas[y:y + h, x:x + w]
    region[mask > 0] = colour


def _tight_box(mask, x, y):
    """COCO [x, y, w, h] of the set pixels of ``mask`` placed at (x, y)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(x + cols[0]), float(y + rows[0]),
            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": runs, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _render(rng, image_size, num_classes, min_scale=MIN_SCALE, max_objects=MAX_OBJECTS,
            crowd_fraction=CROWD_FRACTION):
    """One image (H x W x 3 uint8) and its COCO annotations (without ids)."""
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.75, 1.0)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _background(rng, height, width)
    side = min(height, width)
    placed, annotations = [], []

    if rng.random() < crowd_fraction:
        annotations.append(_render_crowd(rng, canvas, num_classes, placed))

    empty = rng.random() < EMPTY_FRACTION or max_objects == 0
    num_objects = 0 if empty else int(rng.integers(1, max_objects + 1))
    for _ in range(num_objects):
        cls = int(rng.integers(num_classes))
        cid, kind, base = CLASSES[cls]
        for _attempt in range(20):
            # log-uniform size: as many small objects as large ones
            s = side * math.exp(rng.uniform(math.log(min_scale), math.log(MAX_SCALE)))
            aspect = math.exp(rng.uniform(-0.22, 0.22))
            w = max(4, int(round(s * aspect * (2.0 if kind == "bar" else 1.0))))
            h = max(4, int(round(s / aspect)))
            w, h = min(w, width), min(h, height)
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (x, y, x + w, y + h)
            if all(_cover(box, other) <= MAX_COVER for other in placed):
                break
        else:
            continue
        mask, polygons = _draw_shape(kind, w, h, rng)
        _paint(canvas, mask, x, y, _colour(rng, base))
        placed.append(box)
        segmentation = [[round(float(v), 2) for px, py in poly for v in (px + x, py + y)]
                        for poly in polygons]
        annotations.append({
            "category_id": cid,
            "bbox": _tight_box(mask, x, y),
            "area": float(mask.sum()),
            "iscrowd": 0,
            "segmentation": segmentation,
        })
    return canvas, annotations


def _render_crowd(rng, canvas, num_classes, placed):
    """A tight cluster of small same-class shapes, annotated as one iscrowd=1 region."""
    height, width = canvas.shape[:2]
    side = min(height, width)
    cid, kind, base = CLASSES[int(rng.integers(num_classes))]
    gw, gh = (int(side * rng.uniform(0.2, 0.35)) for _ in range(2))
    gx, gy = int(rng.integers(0, width - gw + 1)), int(rng.integers(0, height - gh + 1))
    full = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(5, 11))):
        s = max(4, int(side * rng.uniform(0.04, 0.08)))
        x = gx + int(rng.integers(0, max(1, gw - s)))
        y = gy + int(rng.integers(0, max(1, gh - s)))
        mask, _ = _draw_shape(kind, s, s, rng)
        _paint(canvas, mask, x, y, _colour(rng, base))
        full[y:y + s, x:x + s] |= mask
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    placed.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return {
        "category_id": cid,
        "bbox": _tight_box(full[rows[0]:, cols[0]:], cols[0], rows[0]),
        "area": float(full.sum()),
        "iscrowd": 1,
        "segmentation": _uncompressed_rle(full),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Writes the synthetic shapes dataset (COCO).")
    parser.add_argument("root")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-scale", type=float, default=MIN_SCALE)
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS)
    parser.add_argument("--crowd-fraction", type=float, default=CROWD_FRACTION)
    args = parser.parse_args(argv)
    root = generate(args.root, num_train=args.num_train, num_val=args.num_val,
                    image_size=args.image_size, seed=args.seed, num_classes=args.num_classes,
                    min_scale=args.min_scale, max_objects=args.max_objects,
                    crowd_fraction=args.crowd_fraction)
    print(f"synthetic COCO dataset at {root}")


if __name__ == "__main__":
    main()
