"""SSD losses (SSD paper section 2.2 "Training objective"; focal loss from Lin et al., RetinaNet;
the GIoU box loss from Rezatofighi et al., 2019, on the boxes decoded with the anchors).

Targets come from ``keras_mnv2.detection.matching.encode_targets``: class targets are 0 for background,
1..C for objects and -1 for ignored anchors. Both losses are normalized by the number of positive
anchors in the whole batch, max(1, P), as the SSD paper and keras-hub's RetinaNet do.

They are ordinary Keras losses written in ``keras.ops`` (TensorFlow, JAX and torch backends):
``call`` returns one value per image (its sum over anchors), already divided by the batch's
normalizer, and the default reduction is ``"sum"``, so the loss is ``sum over the batch /
max(1, P)``. Any other ``reduction`` and a per-image ``sample_weight`` [B] then act as they do on
any Keras loss;
``normalizer=`` overrides max(1, P) (e.g. with a count taken over all replicas). Under
``tf.distribute`` Keras sums the replicas' gradients and divides a loss by the number of
replicas only for its averaging reductions, not for ``"sum"``: with ``"sum"`` these losses divide
each replica's values by the number of replicas themselves (``replica_share``), so the gradient is
the replicas' mean of their normalized losses.
"""

import keras
import numpy as np
from keras import ops

from keras_mnv2.errors import InputError

MODES = ("softmax", "focal")
BOX_LOSSES = ("smooth_l1", "giou")


def _class_ids(y_true):
    # Keras converts y_true to the loss dtype (float) before ``call``.
    return ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")


def _positives(class_ids):
    return ops.cast(class_ids > 0, "float32")


def replica_share(loss, values):
    """``values`` divided by the replicas of the current ``tf.distribute`` strategy where Keras
    will not do it (``loss.reduction == "sum"``); unchanged otherwise and on other backends."""
    if loss.reduction != "sum":
        return values
    from keras.src.losses.loss import scale_loss_for_distribution

    return scale_loss_for_distribution(values)


def _divide(per_anchor, positive, normalizer):
    """Per image: the sum of per_anchor / max(1, positives in the batch), or / the normalizer."""
    if normalizer is None:
        normalizer = ops.maximum(ops.sum(positive), 1.0)
    return ops.sum(per_anchor, axis=-1) / ops.cast(normalizer, per_anchor.dtype)


def _check_normalizer(normalizer):
    if normalizer is not None and not (isinstance(normalizer, (int, float))
                                       and not isinstance(normalizer, bool) and normalizer > 0):
        raise InputError(f"normalizer must be a number > 0 or None, got {normalizer!r}")
    return normalizer


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SSDBoxLoss(keras.losses.Loss):
    """Smooth L1 (Huber, delta 1) localization loss on positive anchors.

    y_true: [B, N, 5], the 4 encoded box targets and the class target (as a float) last.
    y_pred: [B, N, 4] box encodings.
    Per image: the smooth L1 summed over its positive anchors and the 4 coordinates, / max(1, P).
    With the default ``"sum"`` reduction: the sum over the batch / max(1, P).
    """

    def __init__(self, normalizer=None, name="ssd_box_loss", reduction="sum", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.normalizer = _check_normalizer(normalizer)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        positive = _positives(_class_ids(y_true[..., 4]))
        error = ops.abs(y_true[..., :4] - y_pred)
        smooth_l1 = ops.where(error < 1.0, 0.5 * ops.square(error), error - 0.5)
        return replica_share(self, _divide(ops.sum(smooth_l1, axis=-1) * positive, positive,
                                          self.normalizer))

    def get_config(self):
        config = super().get_config()
        config["normalizer"] = self.normalizer
        return config


# The largest size ratio to its anchor a predicted box is decoded at in the GIoU loss (log-size
# encodings above it are clipped): far beyond any box matched to an anchor (a match needs
# IoU >= 0.5), it only keeps exp() finite for a diverging prediction.
MAX_SIZE_RATIO = 100.0


def giou(boxes_a, boxes_b):
    """Generalized IoU (Rezatofighi et al., 2019) of corner boxes (ymin, xmin, ymax, xmax)
    [..., 4] pairwise along the leading dimensions: IoU - (enclosing area - union) / enclosing
    area, in (-1, 1]."""
    ymin_a, xmin_a, ymax_a, xmax_a = ops.unstack(ops.convert_to_tensor(boxes_a), num=4, axis=-1)
    ymin_b, xmin_b, ymax_b, xmax_b = ops.unstack(ops.convert_to_tensor(boxes_b), num=4, axis=-1)
    area_a = ops.maximum(ymax_a - ymin_a, 0.0) * ops.maximum(xmax_a - xmin_a, 0.0)
    area_b = ops.maximum(ymax_b - ymin_b, 0.0) * ops.maximum(xmax_b - xmin_b, 0.0)
    inter = (ops.maximum(ops.minimum(ymax_a, ymax_b) - ops.maximum(ymin_a, ymin_b), 0.0)
             * ops.maximum(ops.minimum(xmax_a, xmax_b) - ops.maximum(xmin_a, xmin_b), 0.0))
    enclosing = ((ops.maximum(ymax_a, ymax_b) - ops.minimum(ymin_a, ymin_b))
                 * (ops.maximum(xmax_a, xmax_b) - ops.minimum(xmin_a, xmin_b)))
    eps = 1e-9  # keeps the divisions finite for empty boxes (the box coder's EPSILON is 1e-8)
    union = area_a + area_b - inter
    return inter / (union + eps) - (enclosing - union) / (enclosing + eps)


@keras.saving.register_keras_serializable(package="keras_mnv2")
class SSDGIoULoss(keras.losses.Loss):
    """GIoU localization loss on positive anchors: ``weight * (1 - GIoU)`` of the predicted and
    the target box, both decoded from their encodings with the anchors (``box_coder``), so the
    model and its outputs stay those of ``SSDBoxLoss`` (same encodings, same export).

    y_true, y_pred and the normalization as ``SSDBoxLoss``. ``anchors``: [N, 4] (cy, cx, h, w),
    the model's (``model.anchors``). ``weight`` 10: 1 - GIoU moves much less with the encodings
    than the smooth L1 of encodings scaled by (10, 10, 5, 5) does, and on the embedded detection
    job the weight 2 of ATSS and FCOS lost AP to smooth L1 where 10 gained it
    (docs/training/detection.md, "Box loss").
    """

    def __init__(self, anchors, weight=10.0, normalizer=None, name="ssd_giou_loss",
                 reduction="sum", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        anchors = np.asarray(anchors, "float32")
        if anchors.ndim != 2 or anchors.shape[1] != 4:
            raise InputError(f"anchors must be [N, 4] (cy, cx, h, w), got shape {anchors.shape}")
        self.anchors = anchors
        self.weight = float(weight)
        self.normalizer = _check_normalizer(normalizer)

    def call(self, y_true, y_pred):
        from keras_mnv2.detection.box_coder import SCALE_FACTORS, decode_boxes

        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        positive = _positives(_class_ids(y_true[..., 4]))
        max_log_size = [float(np.log(MAX_SIZE_RATIO)) * s for s in SCALE_FACTORS[2:]]
        y_pred = ops.concatenate([y_pred[..., :2], ops.minimum(y_pred[..., 2:], max_log_size)],
                                 axis=-1)
        anchors = ops.convert_to_tensor(self.anchors)
        target_boxes = decode_boxes(y_true[..., :4], anchors)
        predicted_boxes = decode_boxes(y_pred, anchors)
        per_anchor = self.weight * (1.0 - giou(predicted_boxes, target_boxes))
        # where, not a product: a non-positive anchor's target (zeros, or anything) never counts
        per_anchor = ops.where(positive > 0, per_anchor, 0.0)
        return replica_share(self, _divide(per_anchor, positive, self.normalizer))

    def get_config(self):
        config = super().get_config()
        config.update(anchors=self.anchors.tolist(), weight=self.weight,
                      normalizer=self.normalizer)
        return config


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
    Ignored anchors never count. Per image: its counted loss / max(1, P); with the default
    ``"sum"`` reduction, the sum over the batch / max(1, P), P = positives in the batch.
    """

    def __init__(self, mode="softmax", negatives_per_positive=3, min_negatives=3, alpha=0.25,
                 gamma=2.0, normalizer=None, name="ssd_class_loss", reduction="sum", dtype=None):
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if negatives_per_positive < 0 or min_negatives < 0:
            raise InputError("negatives_per_positive and min_negatives must be >= 0, got "
                             f"{negatives_per_positive!r}, {min_negatives!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mode = mode
        self.negatives_per_positive = negatives_per_positive
        self.min_negatives = min_negatives
        self.alpha = alpha
        self.gamma = gamma
        self.normalizer = _check_normalizer(normalizer)

    def call(self, y_true, y_pred):
        labels = _class_ids(y_true)
        logits = ops.cast(y_pred, "float32")
        positive = _positives(labels)
        if self.mode == "softmax":
            per_anchor = self._softmax_with_mining(labels, logits, positive)
        else:
            per_anchor = self._focal(labels, logits)
        return replica_share(self, _divide(per_anchor, positive, self.normalizer))

    def _softmax_with_mining(self, labels, logits, positive):
        cross_entropy = ops.sparse_categorical_crossentropy(
            ops.maximum(labels, 0), logits, from_logits=True)  # [B, N], >= 0
        negative = ops.cast(ops.equal(labels, 0), "float32")
        num_negative = ops.sum(negative, axis=-1)
        k = ops.maximum(self.negatives_per_positive * ops.sum(positive, axis=-1),
                        float(self.min_negatives))
        k = ops.minimum(k, num_negative)  # [B]
        # Each negative's rank among its image's negatives by descending loss (non-negatives
        # score -1 < any CE, so they rank last and k never reaches them). Tied losses are equal,
        # so which of them a sort puts first does not change the sum.
        mining_score = ops.where(negative > 0, cross_entropy, -1.0)
        order = ops.argsort(-mining_score, axis=-1)
        rank = ops.argsort(order, axis=-1)
        hard = ops.cast(ops.cast(rank, "float32") < k[:, None], "float32") * negative
        return cross_entropy * (positive + hard)

    def _focal(self, labels, logits):
        foreground = logits[..., 1:]
        num_classes = ops.shape(foreground)[-1]
        targets = ops.one_hot(ops.maximum(labels, 0) - 1, num_classes)  # background -> zeros
        # sigmoid cross-entropy, stable: max(x, 0) - x * z + log(1 + exp(-|x|))
        cross_entropy = (ops.relu(foreground) - foreground * targets
                         + ops.log1p(ops.exp(-ops.abs(foreground))))
        probs = ops.sigmoid(foreground)
        p_t = targets * probs + (1.0 - targets) * (1.0 - probs)
        alpha_t = targets * self.alpha + (1.0 - targets) * (1.0 - self.alpha)
        focal = alpha_t * ops.power(1.0 - p_t, self.gamma) * cross_entropy
        counted = ops.cast(labels >= 0, "float32")
        return ops.sum(focal, axis=-1) * counted

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, negatives_per_positive=self.negatives_per_positive,
                      min_negatives=self.min_negatives, alpha=self.alpha, gamma=self.gamma,
                      normalizer=self.normalizer)
        return config


def ssd_losses(box_loss="smooth_l1", anchors=None, **class_loss_kwargs):
    """{"boxes": the box loss, "classes": SSDClassLoss(**class_loss_kwargs)} for ``compile``
    of a model whose outputs are named "boxes" and "classes". ``box_loss``: "smooth_l1"
    (``SSDBoxLoss``, on the encodings) or "giou" (``SSDGIoULoss`` on the decoded boxes, which
    needs the model's ``anchors``)."""
    if box_loss not in BOX_LOSSES:
        raise InputError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    if box_loss == "giou":
        if anchors is None:
            raise InputError("box_loss 'giou' decodes the boxes: pass the model's anchors")
        boxes = SSDGIoULoss(anchors)
    else:
        boxes = SSDBoxLoss()
    return {"boxes": boxes, "classes": SSDClassLoss(**class_loss_kwargs)}
