"""SSD losses (SSD paper section 2.2 "Training objective"; focal loss from Lin et al., RetinaNet).

Targets come from ``keras_mnv2.detection.matching.encode_targets``: class targets are 0 for background,
1..C for objects and -1 for ignored anchors. Both losses are normalized by the number of positive
anchors in the whole batch, max(1, P). Keras' default ``"sum_over_batch_size"`` reduction
averages the per-image values, so each image's value is returned already multiplied by the batch
size B: the loss is then exactly ``sum over the batch / max(1, P)`` (and under ``tf.distribute``
Keras' per-replica scaling averages the replicas' values as it should).
"""

import keras
import tensorflow as tf

MODES = ("softmax", "focal")


def _positives(class_targets):
    return tf.cast(class_targets > 0, tf.float32)


def _batch_normalized(per_image, positive):
    """per_image * B / max(1, positives in the batch): see the module docstring."""
    batch_size = tf.cast(tf.shape(per_image)[0], per_image.dtype)
    return per_image * batch_size / tf.maximum(tf.reduce_sum(positive), 1.0)


def _class_ids(y_true):
    # Keras converts y_true to the loss dtype (float) before ``call``.
    return tf.cast(tf.round(tf.cast(y_true, tf.float32)), tf.int32)


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SSDBoxLoss(keras.losses.Loss):
    """Smooth L1 (Huber, delta 1) localization loss on positive anchors.

    y_true: [B, N, 5], the 4 encoded box targets and the class target (as a float) last.
    y_pred: [B, N, 4] box encodings.
    Value: sum over positive anchors and the 4 coordinates of the batch, / max(1, P).
    """

    def __init__(self, name="ssd_box_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        positive = _positives(_class_ids(y_true[..., 4]))
        error = tf.abs(y_true[..., :4] - y_pred)
        smooth_l1 = tf.where(error < 1.0, 0.5 * tf.square(error), error - 0.5)
        per_image = tf.reduce_sum(tf.reduce_sum(smooth_l1, axis=-1) * positive, axis=-1)
        return _batch_normalized(per_image, positive)


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SSDClassLoss(keras.losses.Loss):
    """Classification loss.

    y_true: [B, N] class targets (0 background, 1..C objects, -1 ignore).
    y_pred: [B, N, C + 1] logits, column 0 for background.

    mode="softmax": softmax cross-entropy over C + 1 classes on every positive anchor, plus hard
      negative mining per image (SSD section 2.2): the k highest-loss background anchors, with
      k = min(background anchors, max(negatives_per_positive * positives, min_negatives)).
      ``min_negatives`` (default 3, as ``min_negatives_per_image`` in the OD API's SSD configs)
      keeps images without objects teaching the background class.
    mode="focal": sigmoid focal loss (alpha, gamma) over the C foreground logits (column 0 is not
      used) on every non-ignored anchor; background anchors have all-zero targets. No mining.
    Ignored anchors never count. Value: sum over the batch / max(1, P), P = positives in the batch.
    """

    def __init__(self, mode="softmax", negatives_per_positive=3, min_negatives=3, alpha=0.25,
                 gamma=2.0, name="ssd_class_loss", reduction="sum_over_batch_size", dtype=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if negatives_per_positive < 0 or min_negatives < 0:
            raise ValueError("negatives_per_positive and min_negatives must be >= 0, got "
                             f"{negatives_per_positive!r}, {min_negatives!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mode = mode
        self.negatives_per_positive = negatives_per_positive
        self.min_negatives = min_negatives
        self.alpha = alpha
        self.gamma = gamma

    def call(self, y_true, y_pred):
        labels = _class_ids(y_true)
        logits = tf.cast(y_pred, tf.float32)
        positive = _positives(labels)
        if self.mode == "softmax":
            per_image = self._softmax_with_mining(labels, logits, positive)
        else:
            per_image = self._focal(labels, logits)
        return _batch_normalized(per_image, positive)

    def _softmax_with_mining(self, labels, logits, positive):
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(labels, 0), logits=logits)  # [B, N], >= 0
        negative = tf.equal(labels, 0)
        num_negative = tf.reduce_sum(tf.cast(negative, tf.float32), axis=-1)
        k = tf.maximum(self.negatives_per_positive * tf.reduce_sum(positive, axis=-1),
                       float(self.min_negatives))
        k = tf.minimum(k, num_negative)  # [B]
        # Non-negatives sort last (-1 < any CE), and k never reaches them.
        ranked = tf.sort(tf.where(negative, cross_entropy, -1.0), axis=-1, direction="DESCENDING")
        rank = tf.cast(tf.range(tf.shape(ranked)[-1]), tf.float32)
        hard = tf.cast(rank[None, :] < k[:, None], tf.float32)
        return (tf.reduce_sum(cross_entropy * positive, axis=-1)
                + tf.reduce_sum(ranked * hard, axis=-1))

    def _focal(self, labels, logits):
        foreground = logits[..., 1:]
        num_classes = tf.shape(foreground)[-1]
        targets = tf.one_hot(tf.maximum(labels, 0) - 1, num_classes)  # background -> all zeros
        cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=foreground)
        probs = tf.sigmoid(foreground)
        p_t = targets * probs + (1.0 - targets) * (1.0 - probs)
        alpha_t = targets * self.alpha + (1.0 - targets) * (1.0 - self.alpha)
        focal = alpha_t * tf.pow(1.0 - p_t, self.gamma) * cross_entropy
        counted = tf.cast(labels >= 0, tf.float32)
        return tf.reduce_sum(tf.reduce_sum(focal, axis=-1) * counted, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, negatives_per_positive=self.negatives_per_positive,
                      min_negatives=self.min_negatives, alpha=self.alpha, gamma=self.gamma)
        return config


def ssd_losses(**class_loss_kwargs):
    """{"boxes": SSDBoxLoss(), "classes": SSDClassLoss(**class_loss_kwargs)} for ``compile``
    of a model whose outputs are named "boxes" and "classes"."""
    return {"boxes": SSDBoxLoss(), "classes": SSDClassLoss(**class_loss_kwargs)}
