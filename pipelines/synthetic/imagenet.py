"""A synthetic classification dataset written in the ImageNet (ILSVRC2012, Kaggle CLS-LOC) layout.

Layout::

    root/train/<wnid>/<wnid>_<i>.JPEG       class folders, as ILSVRC2012_img_train
    root/val/ILSVRC2012_val_<8 digits>.JPEG  one flat folder, as ILSVRC2012_img_val
    root/LOC_val_solution.csv               ImageId,PredictionString (wnid and box), as Kaggle
    root/LOC_synset_mapping.txt             "<wnid> <name>" per line, in label order
    root/manifest.json                      the parameters; a matching manifest makes generate()
                                            a no-op

Each image holds one object of its class on a noisy background: a gradient, low-contrast
blotches and per-pixel noise. Classes are shapes (circle, square, triangle, cross, ring, star,
crescent, diamond, ...) and textures (stripes, checkerboard, dots, ...). Colour says nothing
about the class: object and background colours are drawn at random, with enough contrast to see
the object. The object's side spans 30% to 75% of the image's shorter side, at a random position,
with a small rotation; up to three irregular blobs of other colours lie around it and may cover
part of it (occlusion). Image sides vary (the shorter side is 80-100% of the longer).

    python -m pipelines.synthetic.imagenet data/shapes_imagenet
"""

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.manifest import reuse_or_wipe, write_manifest

FORMAT_VERSION = 1

# (wnid, name, colour family): made-up WordNet-style ids (real ones are n0..., these n9...).
# Two classes share each colour family, so colour narrows a class down to two and the shape or
# texture decides.
CLASSES = (
    ("n90000001", "circle", 0),
    ("n90000002", "square", 1),
    ("n90000003", "triangle", 2),
    ("n90000004", "star", 3),
    ("n90000005", "crescent", 4),
    ("n90000006", "cross", 0),
    ("n90000007", "ring", 1),
    ("n90000008", "dots", 2),
    ("n90000009", "checkerboard", 3),
    ("n90000010", "stripes", 4),
    ("n90000011", "diamond", 5),
    ("n90000012", "zigzag", 5),
)
FAMILIES = ((220, 40, 40), (40, 180, 60), (50, 80, 230), (235, 205, 30), (200, 50, 210),
            (30, 200, 210))
COLOUR_JITTER = 40  # per channel, either way
MAX_CLASSES = len(CLASSES)
TEXTURES = ("stripes", "checkerboard", "dots", "zigzag")

MIN_SCALE, MAX_SCALE = 0.35, 0.75  # object side / image shorter side
MAX_ROTATION = 15.0  # degrees, either way
MAX_BLOBS = 3
MIN_CONTRAST = 90.0  # least RGB distance between object and background colours
SPLIT_INDEX = {"train": 0, "val": 1}
VAL_PREFIX = "ILSVRC2012_val_"


def generate(root, num_train_per_class=300, num_val_per_class=50, num_classes=10,
             image_size=144, seed=0, jpeg_quality=90):
    """Writes the dataset under ``root`` unless a manifest with the same parameters is there.

    ``image_size`` is the longer image side in pixels. Val images cycle through the classes
    (image i is class ``i % num_classes`` before a seeded shuffle of the order), so both splits
    are balanced. Returns the root as a ``Path``.
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {num_classes}")
    if image_size < 48:
        raise ValueError(f"image_size must be at least 48, got {image_size}")
    if num_train_per_class < 1 or num_val_per_class < 1:
        raise ValueError("num_train_per_class and num_val_per_class must be at least 1")
    root = Path(root)
    params = {
        "format_version": FORMAT_VERSION,
        "num_train_per_class": int(num_train_per_class),
        "num_val_per_class": int(num_val_per_class),
        "num_classes": int(num_classes),
        "image_size": int(image_size),
        "seed": int(seed),
        "jpeg_quality": int(jpeg_quality),
    }
    if reuse_or_wipe(root, params, required=("LOC_val_solution.csv", "train"),
                     wipe=("train", "val")):
        return root
    root.mkdir(parents=True, exist_ok=True)
    classes = CLASSES[:num_classes]
    with open(root / "LOC_synset_mapping.txt", "w") as f:
        f.writelines(f"{wnid} {name}\n" for wnid, name, _ in classes)
    for label, (wnid, _, _) in enumerate(classes):
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(num_train_per_class):
            rng = np.random.default_rng([seed, SPLIT_INDEX["train"], label, i])
            pixels, _ = render(rng, label, image_size)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=jpeg_quality)
    (root / "val").mkdir(exist_ok=True)
    count = num_val_per_class * num_classes
    order = np.random.default_rng([seed, SPLIT_INDEX["val"]]).permutation(count)
    rows = []
    for i in range(count):
        label = int(order[i] % num_classes)
        rng = np.random.default_rng([seed, SPLIT_INDEX["val"], label, i])
        pixels, box = render(rng, label, image_size)
        image_id = f"{VAL_PREFIX}{i + 1:08d}"
        Image.fromarray(pixels).save(root / "val" / f"{image_id}.JPEG", quality=jpeg_quality)
        rows.append((image_id, " ".join([classes[label][0], *map(str, box)])))
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows(rows)
    write_manifest(root, params)
    return root


def class_names(num_classes=10):
    """The (wnid, name) pairs of the first ``num_classes`` classes, in label order."""
    return tuple((wnid, name) for wnid, name, _ in CLASSES[:num_classes])


def render(rng, label, image_size):
    """One image (H x W x 3 uint8) of class ``label`` and the object's box [x0, y0, x1, y1]."""
    long_side, short_side = image_size, int(round(image_size * rng.uniform(0.8, 1.0)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    _, kind, family = CLASSES[label]
    colour = tuple(int(c) for c in np.clip(
        np.asarray(FAMILIES[family]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3),
        0, 255))
    background, base = _background(rng, height, width, colour)

    side = min(height, width)
    s = int(round(side * rng.uniform(MIN_SCALE, MAX_SCALE)))
    # draw the object on a padded square tile, rotate it, then paste
    tile = int(math.ceil(s * 1.5))
    mask, pattern = _object_mask(kind, s, tile, rng)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    mask = np.asarray(Image.fromarray(mask * 255).rotate(angle, resample=Image.BILINEAR)) / 255.0
    rows, cols = np.flatnonzero(mask.max(axis=1) > 0.5), np.flatnonzero(mask.max(axis=0) > 0.5)
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if pattern is not None:
        pattern = np.asarray(Image.fromarray(pattern * 255).rotate(angle)) / 255.0
        pattern = pattern[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    mh, mw = mask.shape
    mh, mw = min(mh, height), min(mw, width)
    mask = mask[:mh, :mw]
    y = int(rng.integers(0, height - mh + 1))
    x = int(rng.integers(0, width - mw + 1))

    canvas = background.astype(np.float32)
    region = canvas[y:y + mh, x:x + mw]
    if pattern is None:
        alpha = mask[..., None]
        region[:] = region * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    else:  # texture: the pattern in the object colour, the gaps in a second colour
        second = _contrasting_colour(rng, colour, reference=base)
        pattern = pattern[:mh, :mw, None]
        fill = pattern * np.asarray(colour, np.float32) + (1 - pattern) * np.asarray(
            second, np.float32)
        alpha = mask[..., None]
        region[:] = region * (1 - alpha) + fill * alpha

    for _ in range(int(rng.integers(0, MAX_BLOBS + 1))):
        _blob(rng, canvas, (x, y, x + mw, y + mh), base)

    canvas += rng.normal(0, rng.uniform(3, 12), size=canvas.shape[:2] + (1,))
    return np.clip(canvas, 0, 255).astype(np.uint8), [x, y, x + mw, y + mh]


def _background(rng, height, width, colour):
    """Gradient, a few low-contrast blotches, in a colour far from the object's ``colour``;
    returns (H x W x 3 float32, base colour)."""
    base = np.asarray(_contrasting_colour(rng, colour), np.float32)
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
    gy, gx = rng.uniform(-25, 25, size=(2, 1, 1, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(base + gy * ys + gx * xs, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(4, width / 3), rng.uniform(4, height / 3)
        tone = tuple(int(c) for c in np.clip(base + rng.uniform(-30, 30, 3), 0, 255))
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=tone)
    return np.asarray(img, dtype=np.float32), base


def _contrasting_colour(rng, base, reference=None):
    """A random colour at least MIN_CONTRAST from ``base`` (and from ``reference`` if given)."""
    others = [np.asarray(base, np.float32)]
    if reference is not None:
        others.append(np.asarray(reference, np.float32))
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if all(np.linalg.norm(colour - o) >= MIN_CONTRAST for o in others):
            break
    return tuple(int(c) for c in colour)


def _object_mask(kind, s, tile, rng):
    """(mask, pattern): float masks on a tile x tile square, the object s px across at its centre.

    ``pattern`` is None for shapes; for textures it holds the 0/1 pattern and the mask is the
    patch (a rectangle or an ellipse).
    """
    img = Image.new("L", (tile, tile), 0)
    draw = ImageDraw.Draw(img)
    c = tile / 2
    h = s / 2
    pattern = None
    if kind == "circle":
        draw.ellipse([c - h, c - h, c + h, c + h], fill=1)
    elif kind == "square":
        draw.rectangle([c - h, c - h, c + h, c + h], fill=1)
    elif kind == "triangle":
        draw.polygon([(c, c - h), (c + h, c + h * 0.8), (c - h, c + h * 0.8)], fill=1)
    elif kind == "cross":
        t = h * 0.34
        draw.rectangle([c - h, c - t, c + h, c + t], fill=1)
        draw.rectangle([c - t, c - h, c + t, c + h], fill=1)
    elif kind == "ring":
        draw.ellipse([c - h, c - h, c + h, c + h], fill=1)
        r = h * 0.55
        draw.ellipse([c - r, c - r, c + r, c + r], fill=0)
    elif kind == "star":
        t = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, h, h * 0.42)
        draw.polygon(list(zip(c + r * np.cos(t), c + r * np.sin(t))), fill=1)
    elif kind == "crescent":
        draw.ellipse([c - h, c - h, c + h, c + h], fill=1)
        off = h * 0.55
        draw.ellipse([c - h + off, c - h * 0.95, c + h + off, c + h * 0.95], fill=0)
    elif kind == "diamond":  # a tall rhombus
        draw.polygon([(c, c - h), (c + h * 0.62, c), (c, c + h), (c - h * 0.62, c)], fill=1)
    elif kind in TEXTURES:
        if rng.random() < 0.5:
            draw.rectangle([c - h, c - h * rng.uniform(0.6, 1), c + h, c + h], fill=1)
        else:
            draw.ellipse([c - h, c - h, c + h, c + h], fill=1)
        pattern = _texture(kind, tile, rng)
    else:
        raise ValueError(f"unknown class kind {kind!r}")
    return np.asarray(img, dtype=np.float32), pattern


def _texture(kind, tile, rng):
    """A 0/1 float pattern of tile x tile pixels; the period is 10 to 16 px (still 4 or more
    pixels once the image is scaled to 64 px)."""
    period = rng.uniform(10, 16)
    yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
    if kind == "stripes":
        a = rng.uniform(0, np.pi)
        u = xx * np.cos(a) + yy * np.sin(a)
        pattern = (np.mod(u, period) < period / 2)
    elif kind == "checkerboard":
        pattern = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0
    elif kind == "dots":
        dx = np.mod(xx, period) - period / 2
        dy = np.mod(yy, period) - period / 2
        pattern = dx * dx + dy * dy < (period * 0.3) ** 2
    elif kind == "zigzag":
        wave = np.abs(np.mod(xx, period) - period / 2) * 2  # triangle wave, 0..period
        pattern = np.mod(yy + wave, period) < period / 2
    else:
        raise ValueError(kind)
    return pattern.astype(np.float32)


def _blob(rng, canvas, box, base):
    """An irregular polygon of a random colour near the object, covering at most a part of it."""
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    r = side * rng.uniform(0.15, 0.3)
    # centred near one edge of the object: it covers part of that edge or sits beside it
    edge = int(rng.integers(4))
    along = rng.uniform(0, 1)
    across = rng.uniform(-r, r)
    if edge < 2:  # top or bottom
        cx, cy = x0 + along * (x1 - x0), (y0 if edge == 0 else y1) + across
    else:  # left or right
        cx, cy = (x0 if edge == 2 else x1) + across, y0 + along * (y1 - y0)
    n = int(rng.integers(5, 8))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    poly = list(zip(cx + radii * np.cos(t), cy + radii * np.sin(t)))
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1)
    mask = np.asarray(img, dtype=bool)
    canvas[mask] = _contrasting_colour(rng, base)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Writes the synthetic shapes dataset "
                                                 "(ImageNet folder layout).")
    parser.add_argument("root")
    parser.add_argument("--num-train-per-class", type=int, default=300)
    parser.add_argument("--num-val-per-class", type=int, default=50)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = generate(args.root, num_train_per_class=args.num_train_per_class,
                    num_val_per_class=args.num_val_per_class, num_classes=args.num_classes,
                    image_size=args.image_size, seed=args.seed)
    print(f"synthetic ImageNet-layout dataset at {root}")


if __name__ == "__main__":
    main()
