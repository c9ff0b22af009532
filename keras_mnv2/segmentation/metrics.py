"""Semantic segmentation metrics (PASCAL VOC evaluation): confusion matrix, IoU, MeanIoU.

Labels are integer class ids per pixel, [B, H, W] or [B, H, W, 1]; pixels labelled
``ignore_label`` (255 in PASCAL VOC) count nowhere. Confusion matrices have true labels on the
rows and predictions on the columns (as ``tf.math.confusion_matrix`` and ``keras.metrics.MeanIoU``).
"""

import keras
import numpy as np

from keras_mnv2.errors import InputError
from keras_mnv2.segmentation.loss import IGNORE_LABEL


def _as_numpy(value, what):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
    if hasattr(value, "numpy"):  # TF and torch tensors; jax arrays convert through np.asarray
        value = value.numpy()
    value = np.asarray(value)
    if value.dtype.kind not in "iufb":
        raise InputError(f"{what} must be numeric, got dtype {value.dtype}")
    return value


def _integer_ids(values, what):
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise InputError(f"{what} must be integer class ids, got non-integer values")
    return values.astype(np.int64)


def confusion_matrix(labels, predictions, num_classes, ignore_label=IGNORE_LABEL):
    """The [num_classes, num_classes] confusion matrix (rows: labels, columns: predictions).

    ``labels``: integer class ids of any shape (numpy arrays or tf tensors); a trailing axis of
    size 1 ([B, H, W, 1]) is dropped. ``predictions``: class ids of the labels' shape, or
    scores/logits with one more trailing axis of size ``num_classes`` (argmax is taken).
    Pixels whose label is ``ignore_label`` are left out. Raises ValueError for labels or
    predictions outside [0, num_classes) (other than the ignore label) and for mismatched shapes.
    Returns an int64 numpy array.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    labels = _as_numpy(labels, "labels")
    predictions = _as_numpy(predictions, "predictions")
    if labels.shape != predictions.shape and labels.ndim and labels.shape[-1] == 1 \
            and labels.shape[:-1] in (predictions.shape, predictions.shape[:-1]):
        labels = labels[..., 0]
    if predictions.ndim == labels.ndim + 1:
        if predictions.shape[-1] != num_classes:
            raise InputError(
                f"predictions of shape {predictions.shape} look like scores but their last axis "
                f"is not num_classes={num_classes}"
            )
        predictions = np.argmax(predictions, axis=-1)
    if labels.shape != predictions.shape:
        raise InputError(
            f"labels of shape {labels.shape} do not match predictions of shape "
            f"{predictions.shape}"
        )
    labels = _integer_ids(labels, "labels").reshape(-1)
    predictions = _integer_ids(predictions, "predictions").reshape(-1)
    if ignore_label is not None:
        keep = labels != ignore_label
        labels, predictions = labels[keep], predictions[keep]
    for values, what in ((labels, "labels"), (predictions, "predictions")):
        bad = (values < 0) | (values >= num_classes)
        if np.any(bad):
            raise InputError(
                f"{what} must lie in [0, {num_classes}) (or be the ignore label "
                f"{ignore_label}); found {sorted(set(values[bad].tolist()))[:10]}"
            )
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_from_confusion(cm):
    """Per-class IoU = TP / (TP + FP + FN) and their mean, from a confusion matrix.

    Classes that appear neither in the labels nor in the predictions (an empty row and column)
    have no IoU: they are NaN in ``per_class_iou`` and are left out of ``mean_iou`` (as
    ``keras.metrics.MeanIoU`` does). A class predicted but never labelled has IoU 0 and counts.
    Returns ``(mean_iou, per_class_iou)``: a float (NaN if no class is present) and a float64
    numpy array.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise InputError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if np.any(cm < 0):
        raise InputError("confusion matrix must not hold negative counts")
    true_positives = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - true_positives
    present = union > 0
    per_class = np.full(cm.shape[0], np.nan)
    per_class[present] = true_positives[present] / union[present]
    mean = float(per_class[present].mean()) if np.any(present) else float("nan")
    return mean, per_class


@keras.saving.register_keras_serializable(package="keras_mnv2")
class MeanIoU(keras.metrics.MeanIoU):
    """``keras.metrics.MeanIoU`` for logits [B, H, W, C] and integer labels [B, H, W(, 1)],
    leaving out pixels labelled ``ignore_label`` (keras' ``ignore_class``).

    The confusion matrix accumulates over the batches of an epoch; the result is the mean IoU of
    the classes present (see ``iou_from_confusion``).
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, name="mean_iou", dtype=None):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        super().__init__(num_classes, name=name, dtype=dtype, ignore_class=ignore_label,
                         sparse_y_true=True, sparse_y_pred=False)
        self.ignore_label = ignore_label

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "name": self.name, "dtype": self._dtype}
