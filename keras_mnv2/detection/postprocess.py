"""SSD post-processing: decode box encodings, score, and class-wise non-maximum suppression
(TF Object Detection API ``batch_multiclass_non_max_suppression``; SSDLite uses IoU 0.6,
100 detections per class and 100 in total).

Decoding and scoring are ``keras.ops``. NMS is TensorFlow's ``combined_non_max_suppression`` on
the TF backend and ``class_wise_nms`` below (greedy NMS in ``keras.ops``, the same selections)
on JAX and torch, or wherever ``nms="keras"`` asks for it.
"""

import keras
from keras import ops

from keras_mnv2.detection.box_coder import SCALE_FACTORS, decode_boxes
from keras_mnv2.errors import InputError

MODES = ("softmax", "focal")
NMS_IMPLEMENTATIONS = ("auto", "tensorflow", "keras")


def class_scores(class_logits, mode="softmax"):
    """[B, N, C + 1] logits -> [B, N, C] foreground scores: softmax over the C + 1 columns with the
    background column dropped ("softmax"), or sigmoid of the C foreground logits ("focal")."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    logits = ops.cast(class_logits, "float32")
    if mode == "softmax":
        return ops.softmax(logits, axis=-1)[..., 1:]
    return ops.sigmoid(logits[..., 1:])


def _iou_with(box, boxes):
    """IoU of one box [..., 4] against boxes [..., N, 4] -> [..., N] (0 for an empty union)."""
    box = box[..., None, :]
    inter_h = ops.maximum(ops.minimum(box[..., 2], boxes[..., 2])
                          - ops.maximum(box[..., 0], boxes[..., 0]), 0.0)
    inter_w = ops.maximum(ops.minimum(box[..., 3], boxes[..., 3])
                          - ops.maximum(box[..., 1], boxes[..., 1]), 0.0)
    intersection = inter_h * inter_w

    def area(b):
        return ops.maximum(b[..., 2] - b[..., 0], 0.0) * ops.maximum(b[..., 3] - b[..., 1], 0.0)

    union = area(box) + area(boxes) - intersection
    return ops.where(union > 0.0, intersection / ops.where(union > 0.0, union, 1.0), 0.0)


def class_wise_nms(boxes, scores, max_detections_per_class=100, max_detections=100,
                   iou_threshold=0.6, score_threshold=0.01):
    """Greedy NMS per image and class in ``keras.ops``, then the best ``max_detections`` overall.

    boxes [B, N, 4] corners shared by all classes; scores [B, N, C]. Per class, up to
    ``max_detections_per_class`` times: take the highest remaining score above
    ``score_threshold`` (the lowest anchor index on ties), drop every box overlapping it with
    IoU > ``iou_threshold``. As ``tf.image.combined_non_max_suppression`` does.

    Returns (boxes [B, K, 4], scores [B, K], classes [B, K] int32 zero-based, num_detections [B]
    int32), K = max_detections, sorted by descending score; rows past num_detections are zeros.
    """
    boxes = ops.cast(boxes, "float32")
    scores = ops.cast(scores, "float32")
    batch, num_boxes, num_classes = (ops.shape(scores)[0], scores.shape[1], scores.shape[2])
    per_class = min(int(max_detections_per_class), int(num_boxes))
    class_boxes = ops.broadcast_to(boxes[:, None], (batch, num_classes, num_boxes, 4))
    remaining = ops.where(ops.transpose(scores, (0, 2, 1)) > score_threshold,
                          ops.transpose(scores, (0, 2, 1)), -1.0)  # [B, C, N]
    positions = ops.arange(num_boxes, dtype="int32")

    def step(i, state):
        remaining, kept_scores, kept_index = state
        best = ops.cast(ops.argmax(remaining, axis=-1), "int32")  # [B, C]
        one = ops.cast(positions == best[..., None], "float32")  # [B, C, N]
        best_score = ops.sum(remaining * one, axis=-1)
        found = best_score > -0.5  # scores are >= 0; -1 marks the below-threshold and the taken
        best_box = ops.sum(class_boxes * one[..., None], axis=-2)  # [B, C, 4]
        suppressed = (_iou_with(best_box, class_boxes) > iou_threshold) | (one > 0)
        remaining = ops.where(suppressed & found[..., None], -1.0, remaining)
        column = ops.cast(ops.arange(per_class) == i, "float32")  # [per_class]
        kept_scores = kept_scores + column * ops.where(found, best_score, -1.0)[..., None]
        kept_index = kept_index + ops.cast(column, "int32") * best[..., None]
        return remaining, kept_scores, kept_index

    kept_scores = ops.zeros((batch, num_classes, per_class), "float32")
    kept_index = ops.zeros((batch, num_classes, per_class), "int32")
    _, kept_scores, kept_index = ops.fori_loop(0, per_class, step,
                                               (remaining, kept_scores, kept_index))
    # Merge the classes: the best max_detections of all kept (score, class, box).
    flat_scores = ops.reshape(kept_scores, (batch, num_classes * per_class))
    total = min(int(max_detections), num_classes * per_class)
    top_scores, top = ops.top_k(flat_scores, k=total)
    top = ops.cast(top, "int32")
    valid = top_scores > -1.0
    classes = top // per_class
    anchor = ops.take_along_axis(ops.reshape(kept_index, (batch, -1)), top, axis=-1)
    top_boxes = ops.take_along_axis(boxes, ops.repeat(anchor[..., None], 4, axis=-1), axis=1)
    if total < max_detections:  # fewer candidates than rows: pad
        pad = int(max_detections) - total
        top_scores = ops.pad(top_scores, ((0, 0), (0, pad)), constant_values=-1.0)
        classes = ops.pad(classes, ((0, 0), (0, pad)))
        top_boxes = ops.pad(top_boxes, ((0, 0), (0, pad), (0, 0)))
        valid = ops.pad(valid, ((0, 0), (0, pad)))
    return (ops.where(valid[..., None], top_boxes, 0.0), ops.where(valid, top_scores, 0.0),
            ops.where(valid, classes, 0), ops.sum(ops.cast(valid, "int32"), axis=-1))


def _tensorflow_nms(boxes, scores, max_detections_per_class, max_detections, iou_threshold,
                    score_threshold):
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":  # eager values of another backend
        boxes, scores = (tf.constant(ops.convert_to_numpy(v)) for v in (boxes, scores))
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],  # one box per anchor, shared by all classes
        scores,
        max_output_size_per_class=max_detections_per_class,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=True,
    )
    num_detections = tf.cast(nms.valid_detections, tf.int32)
    valid = tf.range(max_detections)[None, :] < num_detections[:, None]
    outputs = (tf.where(valid[..., None], nms.nmsed_boxes, 0.0),
               tf.where(valid, nms.nmsed_scores, 0.0),
               tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32), 0), num_detections)
    if keras.backend.backend() != "tensorflow":
        outputs = tuple(ops.convert_to_tensor(v.numpy()) for v in outputs)
    return outputs


def decode_detections(box_encodings, class_logits, anchors_center, score_threshold=0.01,
                      iou_threshold=0.6, max_detections=100, max_detections_per_class=100,
                      mode="softmax", scale_factors=SCALE_FACTORS, nms="auto"):
    """Model outputs -> final detections, with class-wise NMS.

    Args:
      box_encodings: [B, N, 4] (ty, tx, th, tw) from the box head.
      class_logits: [B, N, C + 1] logits, column 0 for background.
      anchors_center: [N, 4] (cy, cx, h, w).
      nms: "auto" (TensorFlow's kernel on the TF backend, ``class_wise_nms`` on the others),
        "tensorflow" or "keras".

    Returns a dict:
      boxes [B, K, 4] float32 corners clipped to [0, 1]; scores [B, K] float32 (descending);
      classes [B, K] int32, contiguous labels 1..C; num_detections [B] int32.
      K = max_detections; rows past num_detections are zeros (class 0).
    """
    if nms not in NMS_IMPLEMENTATIONS:
        raise InputError(f"nms must be one of {NMS_IMPLEMENTATIONS}, got {nms!r}")
    scores = class_scores(class_logits, mode)
    boxes = ops.clip(decode_boxes(box_encodings, anchors_center, scale_factors), 0.0, 1.0)
    if nms == "auto":
        nms = "tensorflow" if keras.backend.backend() == "tensorflow" else "keras"
    run = _tensorflow_nms if nms == "tensorflow" else class_wise_nms
    boxes, scores, classes, num_detections = run(
        boxes, scores, max_detections_per_class, max_detections, iou_threshold, score_threshold)
    return {
        "boxes": boxes,
        "scores": scores,
        "classes": ops.where(ops.arange(max_detections)[None, :] < num_detections[:, None],
                             classes + 1, 0),
        "num_detections": num_detections,
    }
