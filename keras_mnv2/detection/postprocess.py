"""SSD post-processing: decode box encodings, score, and class-wise non-maximum suppression
(TF Object Detection API ``batch_multiclass_non_max_suppression``; SSDLite uses IoU 0.6,
100 detections per class and 100 in total)."""

import tensorflow as tf

from keras_mnv2.detection.box_coder import SCALE_FACTORS, decode_boxes

MODES = ("softmax", "focal")


def class_scores(class_logits, mode="softmax"):
    """[B, N, C + 1] logits -> [B, N, C] foreground scores: softmax over the C + 1 columns with the
    background column dropped ("softmax"), or sigmoid of the C foreground logits ("focal")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    logits = tf.cast(class_logits, tf.float32)
    if mode == "softmax":
        return tf.nn.softmax(logits, axis=-1)[..., 1:]
    return tf.sigmoid(logits[..., 1:])


def decode_detections(box_encodings, class_logits, anchors_center, score_threshold=0.01,
                      iou_threshold=0.6, max_detections=100, max_detections_per_class=100,
                      mode="softmax", scale_factors=SCALE_FACTORS):
    """Model outputs -> final detections, with ``tf.image.combined_non_max_suppression``.

    Args:
      box_encodings: [B, N, 4] (ty, tx, th, tw) from the box head.
      class_logits: [B, N, C + 1] logits, column 0 for background.
      anchors_center: [N, 4] (cy, cx, h, w).

    Returns a dict:
      boxes [B, K, 4] float32 corners clipped to [0, 1]; scores [B, K] float32 (descending);
      classes [B, K] int32, contiguous labels 1..C; num_detections [B] int32.
      K = max_detections; rows past num_detections are zeros (class 0).
    """
    boxes = tf.clip_by_value(decode_boxes(box_encodings, anchors_center, scale_factors), 0.0, 1.0)
    scores = class_scores(class_logits, mode)
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
    classes = tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32) + 1, 0)
    return {
        "boxes": tf.where(valid[..., None], nms.nmsed_boxes, 0.0),
        "scores": tf.where(valid, nms.nmsed_scores, 0.0),
        "classes": classes,
        "num_detections": num_detections,
    }
