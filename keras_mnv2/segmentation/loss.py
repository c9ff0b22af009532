"""Semantic segmentation loss (DeepLabv3 training).

Labels are integer class ids per pixel, [B, H, W] or [B, H, W, 1]; ``ignore_label`` (255 in
PASCAL VOC: object boundaries and "void") marks pixels that count nowhere in the loss.
"""

import keras
import tensorflow as tf

IGNORE_LABEL = 255


def _label_ids(y_true, logits):
    """Integer labels [B, H, W] from y_true [B, H, W] or [B, H, W, 1] (Keras hands them over
    as floats)."""
    labels = tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32)
    if labels.shape.rank == logits.shape.rank:
        if labels.shape[-1] not in (1, None):
            raise ValueError(
                "labels must be [B, H, W] or [B, H, W, 1] class ids, got shape "
                f"{tuple(labels.shape)} for logits of shape {tuple(logits.shape)}"
            )
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != logits.shape.rank - 1:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)} (expected [B, H, W] or [B, H, W, 1] labels)"
        )
    if not labels.shape[1:].is_compatible_with(logits.shape[1:-1]):
        raise ValueError(
            f"labels are {tuple(labels.shape[1:])} pixels but logits are "
            f"{tuple(logits.shape[1:-1])}: resize the labels (nearest) or the logits first"
        )
    return labels


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SegmentationLoss(keras.losses.Loss):
    """Per-pixel softmax cross-entropy, averaged over the non-ignored pixels of the batch.

    y_true: [B, H, W] or [B, H, W, 1] integer class ids in [0, C), or ``ignore_label``.
    y_pred: [B, H, W, C] logits (no softmax).
    Value: sum of the cross-entropy over the valid pixels of the batch / max(1, valid pixels).
    Keras' default ``"sum_over_batch_size"`` reduction averages per-image values, so each image's
    value is returned multiplied by the batch size B and divided by the batch's valid-pixel count
    (as ``keras_mnv2.detection.losses`` does for the SSD losses). Labels outside [0, C) other than the
    ignore label fail a ``tf.debugging`` check (not under XLA, which drops assertions).
    """

    def __init__(self, ignore_label=IGNORE_LABEL, name="segmentation_loss",
                 reduction="sum_over_batch_size", dtype=None):
        if ignore_label is not None and (
            not isinstance(ignore_label, int) or isinstance(ignore_label, bool)
        ):
            raise ValueError(f"ignore_label must be an integer or None, got {ignore_label!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        labels = _label_ids(y_true, logits)
        if self.ignore_label is None:
            valid = tf.ones_like(labels, dtype=tf.bool)
        else:
            valid = tf.not_equal(labels, self.ignore_label)
        safe_labels = tf.where(valid, labels, 0)
        num_classes = tf.shape(logits)[-1]
        checks = [
            tf.debugging.assert_greater_equal(
                safe_labels, 0, message="segmentation labels must be >= 0 (or the ignore label)"),
            tf.debugging.assert_less(
                safe_labels, num_classes,
                message="segmentation labels must be < num_classes (or the ignore label)"),
        ]
        with tf.control_dependencies(checks):
            cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=safe_labels, logits=logits)
        valid = tf.cast(valid, tf.float32)
        per_image = tf.reduce_sum(cross_entropy * valid, axis=[1, 2])
        batch_size = tf.cast(tf.shape(per_image)[0], tf.float32)
        return per_image * batch_size / tf.maximum(tf.reduce_sum(valid), 1.0)

    def get_config(self):
        config = super().get_config()
        config["ignore_label"] = self.ignore_label
        return config
