"""Semantic segmentation loss (DeepLabv3 training), in ``keras.ops`` (every Keras backend).

Labels are integer class ids per pixel, [B, H, W] or [B, H, W, 1]; ``ignore_label`` (255 in
PASCAL VOC: object boundaries and "void") marks pixels that count nowhere in the loss.
"""

import keras
import numpy as np
from keras import ops

from keras_mnv2.detection.losses import replica_share
from keras_mnv2.errors import InputError
from keras_mnv2.tensors import concrete_numpy

IGNORE_LABEL = 255


def _compatible(a, b):
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _label_ids(y_true, logits):
    """Integer labels [B, H, W] from y_true [B, H, W] or [B, H, W, 1] (Keras hands them over
    as floats)."""
    labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
    labels_shape, logits_shape = tuple(labels.shape), tuple(logits.shape)
    if len(labels_shape) == len(logits_shape):
        if labels_shape[-1] not in (1, None):
            raise InputError(
                "labels must be [B, H, W] or [B, H, W, 1] class ids, got shape "
                f"{labels_shape} for logits of shape {logits_shape}"
            )
        labels = ops.squeeze(labels, axis=-1)
        labels_shape = labels_shape[:-1]
    if len(labels_shape) != len(logits_shape) - 1:
        raise InputError(
            f"labels of shape {labels_shape} do not match logits of shape "
            f"{logits_shape} (expected [B, H, W] or [B, H, W, 1] labels)"
        )
    if not _compatible(labels_shape[1:], logits_shape[1:-1]):
        raise InputError(
            f"labels are {labels_shape[1:]} pixels but logits are "
            f"{logits_shape[1:-1]}: resize the labels (nearest) or the logits first"
        )
    return labels


def _check_range(labels, valid, num_classes):
    """Eager calls only: a label outside [0, C) other than the ignore label is an error. In
    training (traced) the input pipeline has already checked (``pipelines.data.voc``)."""
    values = concrete_numpy(labels)
    keep = concrete_numpy(valid)
    if values is None or keep is None:
        return
    values = values[keep]
    if np.any(values < 0):
        raise InputError("segmentation labels must be >= 0 (or the ignore label), found "
                         f"{sorted(set(values[values < 0].tolist()))[:10]}")
    if np.any(values >= num_classes):
        raise InputError(f"segmentation labels must be < num_classes={num_classes} (or the "
                         f"ignore label), found "
                         f"{sorted(set(values[values >= num_classes].tolist()))[:10]}")


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SegmentationLoss(keras.losses.Loss):
    """Per-pixel softmax cross-entropy, averaged over the non-ignored pixels of the batch.

    y_true: [B, H, W] or [B, H, W, 1] integer class ids in [0, C), or ``ignore_label``.
    y_pred: [B, H, W, C] logits (no softmax).
    ``call`` gives each pixel its cross-entropy / max(1, valid pixels in the batch) (0 on ignored
    pixels), and the default reduction is ``"sum"``: the loss is the mean cross-entropy over the
    valid pixels of the batch. Other reductions and ``sample_weight`` (per pixel [B, H, W], or per
    image as [B, 1, 1]) act as on any Keras loss. Called eagerly, labels outside [0, C) other than the ignore label raise
    ValueError; in ``fit`` the tf.data pipeline is where labels are checked.
    """

    def __init__(self, ignore_label=IGNORE_LABEL, name="segmentation_loss",
                 reduction="sum", dtype=None):
        if ignore_label is not None and (
            not isinstance(ignore_label, int) or isinstance(ignore_label, bool)
        ):
            raise InputError(f"ignore_label must be an integer or None, got {ignore_label!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        labels = _label_ids(y_true, logits)
        if self.ignore_label is None:
            valid = ops.ones_like(labels, dtype="bool")
        else:
            valid = ops.not_equal(labels, self.ignore_label)
        num_classes = logits.shape[-1]
        _check_range(labels, valid, num_classes)
        safe_labels = ops.where(valid, labels, 0)
        # log-sum-exp minus the label's logit: the same on every backend, no gather.
        picked = ops.sum(logits * ops.one_hot(safe_labels, num_classes), axis=-1)
        cross_entropy = ops.logsumexp(logits, axis=-1) - picked
        valid = ops.cast(valid, "float32")
        # with reduction "sum", each replica's share of a strategy's replicas (Keras divides
        # only its averaging reductions by the replicas)
        return replica_share(self, cross_entropy * valid / ops.maximum(ops.sum(valid), 1.0))

    def get_config(self):
        config = super().get_config()
        config["ignore_label"] = self.ignore_label
        return config
