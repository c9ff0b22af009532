"""Calibration images for int8 conversion and QAT range initialisation.

One reader of the forms a user passes as representative data (an array, a tf.data.Dataset of
images, (image, target) pairs or dicts with "image", or a callable returning one), shared by
``export`` (the converter's PTQ and LiteRT Quantizer) and by both QAT schemes (``qat`` and
``keras_qat``), so none of them imports another for it.
"""

import numpy as np

from keras_mnv2.errors import InputError


def _examples(element):
    """Single images [1, H, W, C] from one dataset element (image, (image, target), dict)."""
    if isinstance(element, dict):
        if "image" not in element:
            raise InputError("representative_data yields dicts without an 'image' key: "
                             f"keys {sorted(element)}")
        element = element["image"]
    elif isinstance(element, (tuple, list)):
        if not len(element):
            raise InputError("representative_data yields an empty tuple")
        element = element[0]
    x = np.asarray(element, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InputError(f"representative_data yields arrays of shape {x.shape}: expected an "
                         "image [H, W, C] or a batch [B, H, W, C]")
    return [x[i:i + 1] for i in range(x.shape[0])]


def calibration_images(data, input_shape, limit=100):
    """Up to ``limit`` images [1, H, W, C] float32 from ``data``: an array (or tensor) of
    images, a tf.data.Dataset (of images, (image, target) pairs or dicts with "image", batched or
    not) or a callable returning an iterable of those (the converter's convention)."""
    import tensorflow as tf

    if data is None:
        raise InputError("representative_data is None")
    if callable(data) and not isinstance(data, tf.data.Dataset):
        data = data()
    if isinstance(data, (np.ndarray, tf.Tensor)):
        data = [np.asarray(data, dtype=np.float32)] if np.ndim(data) == 4 else [data]
    images = []
    for element in data:
        for x in _examples(element):
            if tuple(x.shape[1:]) != tuple(input_shape):
                raise InputError(f"representative_data image shape {tuple(x.shape[1:])} != model "
                                 f"input shape {tuple(input_shape)}")
            if not np.all(np.isfinite(x)):
                raise InputError("representative_data holds NaN or infinite values")
            images.append(x)
            if len(images) >= limit:
                return images
    if not images:
        raise InputError("representative_data is empty")
    return images


def images_from_folder(folder, size, limit=100):
    """Up to ``limit`` photos of ``folder`` (sorted by name) as a model's input: resized to
    ``size`` (H, W) and scaled to [-1, 1], float32 [N, H, W, 3] (``keras-mnv2 export --model
    FILE --calibration-images DIR``)."""
    import os

    from keras_mnv2.errors import InputError, MissingFileError
    from keras_mnv2.inference import load_image, model_input

    if not os.path.isdir(folder):
        raise MissingFileError(f"calibration images: no folder {folder}")
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")))
    if not names:
        raise InputError(f"calibration images: {folder} holds no .jpg, .png or .bmp file")
    return np.concatenate([model_input(load_image(os.path.join(folder, n)), size)
                           for n in names[:limit]])
