"""SSD data augmentation (Liu et al., ECCV 2016, Sec. 2.2 "Data augmentation"), as tf.data maps.

Every function takes and returns the element of ``pipelines.data.coco`` (``image`` [H, W, 3] with
values in [0, 255], ``boxes`` float32 [M, 4] normalized (ymin, xmin, ymax, xmax), ``labels``,
``is_crowd``; other keys pass through). Boxes, labels and crowd flags are always filtered
together. ``resize`` ends a pipeline: a square float32 image in [-1, 1], as MobileNetV2 expects.

Randomness is stateless: ``seed`` is a shape [2] integer tensor, for reproducible pipelines one
per element (e.g. zip the data with ``tf.data.Dataset.random(seed).batch(2)``). With
``seed=None`` a fresh seed is drawn from the global generator on every call.
"""

import tensorflow as tf

from keras_mnv2.detection.matching import iou

# The mean RGB of ImageNet (0-255), what SSD fills the zoomed-out canvas with.
MEAN_RGB = (123.675, 116.28, 103.53)
MIN_IOUS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # SSD's crop samplers; 0: any patch
MIN_BOX_SIZE = 1e-3  # normalized height or width below which a box is dropped


def _seed(seed):
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(_seed(seed), num=n))


def _uniform(seed, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def _with(element, **changes):
    out = dict(element)
    out.update(changes)
    return out


def _keep(element, keep, boxes=None):
    """The element with only the boxes (and their labels and crowd flags) where keep is true."""
    boxes = element["boxes"] if boxes is None else boxes
    changes = {"boxes": tf.reshape(tf.boolean_mask(boxes, keep), [-1, 4])}
    for key in ("labels", "is_crowd"):
        if key in element:
            changes[key] = tf.boolean_mask(element[key], keep)
    return _with(element, **changes)


def drop_degenerate(element, min_size=MIN_BOX_SIZE):
    """Drops boxes whose normalized height or width is below ``min_size``."""
    boxes = element["boxes"]
    keep = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    return _keep(element, keep)


def flip_horizontal(element):
    """Mirrors the image left-right; x becomes 1 - x."""
    ymin, xmin, ymax, xmax = tf.unstack(element["boxes"], axis=1)
    boxes = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=1)
    return _with(element, image=tf.reverse(element["image"], axis=[1]), boxes=boxes)


def random_flip(element, seed=None, probability=0.5):
    """Horizontal flip with the given probability."""
    return tf.cond(
        _uniform(_seed(seed)) < probability,
        lambda: flip_horizontal(element),
        lambda: dict(element),
    )


def random_expand(element, seed=None, max_ratio=4.0, probability=0.5, fill=MEAN_RGB):
    """SSD "zoom out": the image on a canvas up to ``max_ratio`` times larger per side.

    The canvas is filled with ``fill`` (the mean pixel); the image lands at a random offset.
    """
    image = element["image"]
    ratio_seed, y_seed, x_seed, coin_seed = _split(seed, 4)
    apply = _uniform(coin_seed) < probability
    ratio = tf.where(apply, _uniform(ratio_seed, minval=1.0, maxval=max_ratio), 1.0)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    canvas_h = tf.cast(tf.math.floor(tf.cast(height, tf.float32) * ratio), tf.int32)
    canvas_w = tf.cast(tf.math.floor(tf.cast(width, tf.float32) * ratio), tf.int32)
    top = tf.random.stateless_uniform([], y_seed, 0, canvas_h - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], x_seed, 0, canvas_w - width + 1, dtype=tf.int32)
    pads = [[top, canvas_h - height - top], [left, canvas_w - width - left]]
    if image.dtype.is_integer:
        fill = [round(v) for v in fill]
    canvas = tf.stack(
        [
            tf.pad(image[..., c], pads, constant_values=tf.cast(fill[c], image.dtype))
            for c in range(3)
        ],
        axis=-1,
    )
    scale = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    offset = tf.cast(tf.stack([top, left, top, left]), tf.float32)
    canvas_size = tf.cast(tf.stack([canvas_h, canvas_w, canvas_h, canvas_w]), tf.float32)
    boxes = (element["boxes"] * scale + offset) / canvas_size
    return _with(element, image=canvas, boxes=boxes)


def _centres_inside(windows, boxes):
    """Whether each box centre lies in each window: [T, M]."""
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    w = windows[:, None, :]
    return (cy >= w[..., 0]) & (cy <= w[..., 2]) & (cx >= w[..., 1]) & (cx <= w[..., 3])


def sample_crop_window(
    image_shape,
    boxes,
    seed=None,
    min_ious=MIN_IOUS,
    min_scale=0.3,
    max_scale=1.0,
    aspect_range=(0.5, 2.0),
    num_trials=50,
):
    """SSD's IoU-constrained crop window, sampled as the SSD Caffe code does.

    One sampler per entry of ``min_ious`` (0 means any patch) draws ``num_trials`` patches and
    keeps its first valid one; the window is then picked uniformly among the whole image and the
    samplers that found a patch. A patch has sides ``[min_scale, max_scale]`` of the image's,
    width / height in ``aspect_range`` (pixels), IoU with some box at least the sampler's
    minimum, and the centre of at least one box (of an image with boxes).
    Returns float32 pixel (top, left, height, width), whole pixels.
    """
    size_seed, pos_seed, pick_seed = _split(seed, 3)
    thresholds = tf.constant(min_ious, tf.float32)
    k = len(min_ious)
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)

    scales = _uniform(size_seed, [k, num_trials, 2], min_scale, max_scale)
    crop_h = tf.maximum(tf.round(scales[..., 0] * height), 1.0)
    crop_w = tf.maximum(tf.round(scales[..., 1] * width), 1.0)
    positions = _uniform(pos_seed, [k, num_trials, 2])
    top = tf.minimum(tf.floor(positions[..., 0] * (height - crop_h + 1)), height - crop_h)
    left = tf.minimum(tf.floor(positions[..., 1] * (width - crop_w + 1)), width - crop_w)
    windows = tf.reshape(
        tf.stack([top / height, left / width, (top + crop_h) / height, (left + crop_w) / width],
                 axis=-1),
        [-1, 4],
    )
    has_boxes = tf.shape(boxes)[0] > 0
    max_iou = tf.where(has_boxes, tf.reduce_max(iou(windows, boxes), axis=1), 0.0)
    has_centre = tf.reduce_any(_centres_inside(windows, boxes), axis=1) | ~has_boxes
    aspect = crop_w / crop_h
    valid = (
        (aspect >= aspect_range[0])
        & (aspect <= aspect_range[1])
        & (tf.reshape(max_iou, [k, num_trials]) >= thresholds[:, None])
        & tf.reshape(has_centre, [k, num_trials])
    )
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)  # per sampler
    found = tf.concat([tf.reduce_any(valid, axis=1), [True]], axis=0)  # last: the whole image
    sampler = tf.argmax(tf.where(found, _uniform(pick_seed, [k + 1]), -1.0),
                        output_type=tf.int32)
    candidates = tf.stack([top, left, crop_h, crop_w], axis=-1)  # [k, trials, 4]
    candidates = tf.gather_nd(candidates, tf.stack([tf.range(k), first], axis=1))  # [k, 4]
    candidates = tf.concat([candidates, [tf.stack([0.0, 0.0, height, width])]], axis=0)
    return candidates[sampler]


def random_iou_crop(element, seed=None, **sampling):
    """Crops to ``sample_crop_window`` (which takes ``sampling``). Boxes whose centres fall
    outside the crop are dropped with their labels; the rest are clipped to it."""
    image, boxes = element["image"], element["boxes"]
    shape = tf.shape(image)
    y0, x0, ch, cw = tf.unstack(sample_crop_window(shape, boxes, seed, **sampling))
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    window = tf.stack([y0 / height, x0 / width, (y0 + ch) / height, (x0 + cw) / width])

    y0i, x0i, chi, cwi = (tf.cast(v, tf.int32) for v in (y0, x0, ch, cw))
    cropped = image[y0i:y0i + chi, x0i:x0i + cwi]
    inside = _centres_inside(window[None], boxes)[0]
    size = tf.stack([window[2] - window[0], window[3] - window[1]] * 2)
    offset = tf.stack([window[0], window[1]] * 2)
    new_boxes = tf.clip_by_value((boxes - offset) / size, 0.0, 1.0)
    return drop_degenerate(_keep(_with(element, image=cropped), inside, boxes=new_boxes))


def photometric_distort(element, seed=None, probability=0.5):
    """SSD's photometric distortions, each applied with ``probability``.

    Brightness (+-32 of 255), contrast and saturation ([0.5, 1.5]) and hue (+-18 degrees), with
    contrast first or last at random (as the SSD Caffe code). Values are clipped to [0, 255];
    the dtype is kept (uint8 is rounded).
    """
    image = element["image"]
    dtype = image.dtype
    x = tf.cast(image, tf.float32) / 255.0
    seeds = _split(seed, 9)

    def maybe(i, op, x):
        return tf.cond(_uniform(seeds[i]) < probability, lambda: op(x, seeds[i + 4]), lambda: x)

    brightness = lambda x, s: tf.image.stateless_random_brightness(x, 32 / 255, s)  # noqa: E731
    contrast = lambda x, s: tf.image.stateless_random_contrast(x, 0.5, 1.5, s)  # noqa: E731
    saturation = lambda x, s: tf.image.stateless_random_saturation(x, 0.5, 1.5, s)  # noqa: E731
    hue = lambda x, s: tf.image.stateless_random_hue(x, 18 / 360, s)  # noqa: E731

    def colour(x):
        return tf.clip_by_value(maybe(3, hue, maybe(2, saturation, x)), 0.0, 1.0)

    x = tf.clip_by_value(maybe(0, brightness, x), 0.0, 1.0)
    x = tf.cond(
        _uniform(seeds[8]) < 0.5,
        lambda: colour(tf.clip_by_value(maybe(1, contrast, x), 0.0, 1.0)),
        lambda: tf.clip_by_value(maybe(1, contrast, colour(x)), 0.0, 1.0),
    )
    x = x * 255.0
    if dtype.is_integer:
        x = tf.round(x)
    return _with(element, image=tf.cast(x, dtype))


def resize(element, input_size):
    """Resizes to ``input_size`` x ``input_size`` (bilinear, aspect not kept: boxes are
    normalized, so they stay) and scales to float32 [-1, 1] (x / 127.5 - 1)."""
    image = tf.image.resize(element["image"], [input_size, input_size])
    image = tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)
    image = tf.ensure_shape(image, [input_size, input_size, 3])
    return _with(element, image=image)


def ssd_train_augment(element, input_size, seed=None):
    """The SSD training chain: photometric distortion, zoom out, IoU crop, flip, resize."""
    seeds = _split(seed, 4)
    element = photometric_distort(element, seeds[0])
    element = random_expand(element, seeds[1])
    element = random_iou_crop(element, seeds[2])
    element = random_flip(element, seeds[3])
    return resize(drop_degenerate(element), input_size)


def eval_preprocess(element, input_size):
    """Evaluation: resize and scale only."""
    return resize(element, input_size)
