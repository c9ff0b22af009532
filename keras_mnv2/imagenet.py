"""ImageNet pre- and post-processing for the classifier (Keras' own utilities where they fit)."""

import json
import os
import warnings

import numpy as np

from keras_mnv2.errors import InputError
from keras_mnv2.mobilenet_v2 import keras_cache_dir

CLASS_INDEX_FILE = "imagenet_class_index.json"
CLASS_INDEX_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
)
_class_index = None


def preprocess_input(x, data_format=None):
    """Scales uint8-range RGB pixels to [-1, 1], as the MobileNetV2 weights expect."""
    from keras.applications import mobilenet_v2

    return mobilenet_v2.preprocess_input(x, data_format=data_format)


def class_index():
    """{index: (wnid, name)} for the 1000 ImageNet classes.

    Names come from Keras' ``imagenet_class_index.json`` (cached in the Keras directory, or
    fetched where a network exists). Offline without that file, the WordNet ids shipped with
    tensorflow-datasets are used as names, with a warning saying which file to add.
    """
    global _class_index
    if _class_index is not None:
        return _class_index
    local = os.path.join(keras_cache_dir(), "models", CLASS_INDEX_FILE)
    path = local if os.path.exists(local) else None
    if path is None:
        import keras

        try:
            path = keras.utils.get_file(CLASS_INDEX_FILE, CLASS_INDEX_URL, cache_subdir="models")
        except Exception:
            path = None
    if path is not None:
        with open(path) as f:
            _class_index = {int(k): tuple(v) for k, v in json.load(f).items()}
        return _class_index
    import tensorflow_datasets as tfds

    labels = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    with open(labels) as f:
        wnids = [line.strip() for line in f if line.strip()]
    warnings.warn(
        f"ImageNet class names not found; using WordNet ids. Put {CLASS_INDEX_FILE} "
        f"(from {CLASS_INDEX_URL}) at {local} for names.",
        stacklevel=2,
    )
    _class_index = {i: (wnid, wnid) for i, wnid in enumerate(wnids)}
    return _class_index


def decode_predictions(preds, top=5, labels=None):
    """Top ``top`` (wnid, name, score) tuples for each row of a [batch, 1000] prediction array
    (or [batch, 1001] from a TF-slim model, whose background column 0 is left out).

    With ``labels`` (one name per column, or a model carrying them as ``model.labels``, e.g.
    one from ``from_preset``), any number of columns: (column index, name, score) tuples."""
    preds = np.asarray(preds)
    if labels is not None:
        return _decode_with(preds, top, labels)
    if preds.ndim == 2 and preds.shape[1] == 1001:  # TF-slim: column 0 is "background"
        preds = preds[:, 1:]
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise InputError(
            "decode_predictions expects predictions of shape (batch, 1000) or (batch, 1001) "
            f"(TF-slim, background first), got {preds.shape}"
        )
    if not 1 <= top <= 1000:
        raise InputError(f"top must be in [1, 1000], got {top}")
    index = class_index()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([(*index[int(i)], float(row[i])) for i in best])
    return results


def _decode_with(preds, top, labels):
    # (keras_mnv2.labels reads class_index from here: this module does not import it back)
    if hasattr(labels, "output"):  # a model
        names = None if getattr(labels, "labels", None) is None else tuple(labels.labels)
    else:
        names = tuple(labels)
    if names is None:
        raise InputError(f"model {labels.name!r} carries no class names (model.labels)")
    if preds.ndim != 2 or preds.shape[1] != len(names):
        raise InputError(f"decode_predictions: predictions of shape {preds.shape} for "
                         f"{len(names)} class names")
    if not 1 <= top <= preds.shape[1]:
        raise InputError(f"top must be in [1, {preds.shape[1]}], got {top}")
    return [[(int(i), f"class {int(i)}" if names[i] is None else names[i], float(row[i]))
             for i in np.argsort(row)[::-1][:top]] for row in preds]
