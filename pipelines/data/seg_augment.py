"""Segmentation preprocessing and augmentation (DeepLabv3, Chen et al. 2017, Sec. 4: random scale
0.5-2.0, crop 513, left-right flip; label 255 ignored), as tf.data maps.

Functions take an ``image`` [H, W, 3] (uint8 0-255 or float) and a ``label`` [H, W, 1] (integer
class indices) and transform both the same way: images bilinearly, labels by nearest neighbour,
so no new label values appear. Padding fills the label with ``IGNORE_LABEL`` and the image with
0 after ``normalize`` (the middle of [-1, 1], i.e. mid grey), so padding is never scored.

Randomness is stateless: ``seed`` is a shape [2] integer tensor; ``None`` draws a fresh one.
"""

import tensorflow as tf

from pipelines.data.augment import _seed, _split  # stateless seeds, as the detection augmentation

IGNORE_LABEL = 255


def normalize(image):
    """uint8 [0, 255] -> float32 [-1, 1], as MobileNetV2 expects."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def resize(image, label, height, width):
    """Image bilinear (float32), label nearest neighbour (dtype kept)."""
    size = tf.stack([height, width])
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    return image, tf.image.resize(label, size, method="nearest")  # nearest keeps the dtype


def random_scale(image, label, min_scale=0.5, max_scale=2.0, step=0.0, seed=None):
    """Rescales both by one factor from [min_scale, max_scale] (multiples of ``step`` from
    ``min_scale`` when ``step`` > 0, as TF DeepLab's scale_factor_step_size)."""
    if min_scale == max_scale == 1.0:
        return tf.cast(image, tf.float32), label
    if step > 0:
        count = int(round((max_scale - min_scale) / step)) + 1
        k = tf.random.stateless_uniform([], _seed(seed), 0, count, dtype=tf.int32)
        scale = min_scale + tf.cast(k, tf.float32) * step
    else:
        scale = tf.random.stateless_uniform([], _seed(seed), min_scale, max_scale)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    return resize(image, label, new[0], new[1])


def pad_to_size(image, label, height, width, image_value=0.0, label_value=IGNORE_LABEL):
    """Pads at the bottom and right up to at least height x width (never crops)."""
    shape = tf.shape(image)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    image = tf.pad(image, paddings, constant_values=tf.cast(image_value, image.dtype))
    label = tf.pad(label, paddings, constant_values=tf.cast(label_value, label.dtype))
    return image, label


def random_crop(image, label, height, width, seed=None):
    """The same random height x width window of both (they must be at least that large)."""
    shape = tf.shape(image)
    with tf.control_dependencies([
        tf.debugging.assert_greater_equal(shape[0], height, message="crop taller than image"),
        tf.debugging.assert_greater_equal(shape[1], width, message="crop wider than image"),
    ]):
        seed_y, seed_x = _split(seed, 2)
        y = tf.random.stateless_uniform([], seed_y, 0, shape[0] - height + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seed_x, 0, shape[1] - width + 1, dtype=tf.int32)
    return image[y:y + height, x:x + width], label[y:y + height, x:x + width]


def random_flip(image, label, seed=None):
    """Left-right flip of both with probability 1/2."""
    flip = tf.random.stateless_uniform([], _seed(seed)) < 0.5
    return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def train_preprocess(image, label, crop_size, min_scale=0.5, max_scale=2.0, scale_step=0.0,
                     flip=True, seed=None):
    """normalize -> random scale -> pad to the crop (255 in the label) -> random crop -> flip.

    Returns float32 [crop, crop, 3] in [-1, 1] and int32 [crop, crop] labels.
    """
    seeds = _split(seed, 3)
    image = normalize(image)
    image, label = random_scale(image, label, min_scale, max_scale, scale_step, seeds[0])
    image, label = pad_to_size(image, label, crop_size, crop_size)
    image, label = random_crop(image, label, crop_size, crop_size, seeds[1])
    if flip:
        image, label = random_flip(image, label, seeds[2])
    image = tf.ensure_shape(image, [crop_size, crop_size, 3])
    label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [crop_size, crop_size])
    return image, label


def eval_preprocess(image, label, size, image_id=None):
    """normalize -> pad the full image to size x size (255 in the label), so images batch.

    Images larger than ``size`` are an error naming ``image_id`` (raise the evaluation size:
    resizing would change what is scored). Returns float32 [size, size, 3] and int32
    [size, size].
    """
    shape = tf.shape(image)
    fits = tf.reduce_max(shape[:2]) <= size
    with tf.control_dependencies([tf.debugging.Assert(fits, [
        f"image larger than the evaluation size {size} (raise eval_size):",
        "?" if image_id is None else image_id, "has shape", shape,
    ])]):
        image = normalize(image)
    image, label = pad_to_size(image, label, size, size)
    image = tf.ensure_shape(image, [size, size, 3])
    label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [size, size])
    return image, label
