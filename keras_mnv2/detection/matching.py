"""Anchor matching and SSD training targets (SSD paper section 2.2 "Matching strategy"; the TF
Object Detection API's ``ArgMaxMatcher`` with ``force_match_for_each_row``).

Everything here is made of TF ops without Python loops over boxes or images, so it runs inside
``tf.data.Dataset.map`` with any number of ground-truth boxes, including none, on one image or
on a padded batch of them at once.
Corner boxes are (ymin, xmin, ymax, xmax), normalized; anchors are (cy, cx, h, w).
"""

import tensorflow as tf

from keras_mnv2.detection.anchors import center_to_corners
from keras_mnv2.detection.box_coder import SCALE_FACTORS, encode_boxes

BACKGROUND = 0
IGNORE = -1


def _area(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, num=4, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes_a, boxes_b):
    """Pairwise intersection over union of corner boxes [..., A, 4] and [..., B, 4] ->
    [..., A, B] float32 (leading dimensions broadcast).

    Pairs with an empty union (two degenerate boxes) have IoU 0. (Written here rather than taken
    from ``keras.utils.bounding_boxes.compute_iou``, which marks any box with a negative
    coordinate as padding and answers -1 for it: anchors of the lowest layers do poke out of the
    image.)
    """
    a = tf.cast(boxes_a, tf.float32)
    b = tf.cast(boxes_b, tf.float32)
    a_ymin, a_xmin, a_ymax, a_xmax = [t[..., :, None] for t in tf.unstack(a, num=4, axis=-1)]
    b_ymin, b_xmin, b_ymax, b_xmax = [t[..., None, :] for t in tf.unstack(b, num=4, axis=-1)]
    inter_h = tf.maximum(tf.minimum(a_ymax, b_ymax) - tf.maximum(a_ymin, b_ymin), 0.0)
    inter_w = tf.maximum(tf.minimum(a_xmax, b_xmax) - tf.maximum(a_xmin, b_xmin), 0.0)
    intersection = inter_h * inter_w
    union = _area(a)[..., :, None] + _area(b)[..., None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def _ground_truth(gt_boxes, gt_labels, gt_ignore):
    """Boxes [G, 4] or [B, G, 4] (a batch: its images' boxes padded with label-0 rows), labels
    and ignore flags [G] or [B, G], as float32, int32 and bool of those shapes."""
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    if gt_boxes.shape.rank == 3:
        shape = tf.shape(gt_boxes)[:2]
    else:  # one image; [] or [0] read as no boxes
        gt_boxes = tf.reshape(gt_boxes, [-1, 4])
        shape = tf.shape(gt_boxes)[:1]
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), shape)
    if gt_ignore is None:
        gt_ignore = tf.zeros_like(gt_labels, dtype=tf.bool)
    gt_ignore = tf.reshape(tf.cast(gt_ignore, tf.bool), shape)
    return gt_boxes, gt_labels, gt_ignore


def match_anchors(gt_boxes, gt_labels, anchors_center, iou_threshold=0.5, gt_ignore=None):
    """Assigns each anchor at most one ground-truth box, for one image or a batch of them.

    Args:
      gt_boxes: [G, 4] corner boxes (G may be 0), or [B, G, 4] for a batch of B images, each
        padded to G boxes with label-0 rows.
      gt_labels: [G] (or [B, G]) ints; a label < 1 marks a padding row, which never matches.
      anchors_center: [N, 4] (cy, cx, h, w).
      iou_threshold: an anchor takes its highest-IoU box when that IoU is >= the threshold.
      gt_ignore: optional [G] (or [B, G]) bools (e.g. COCO ``iscrowd``): such boxes never
        match, but an unmatched anchor overlapping one with IoU >= the threshold is reported
        as ignored.

    Besides the threshold rule, every valid (non-padding, non-ignored) box forces its own
    best-IoU anchor to match it, even under the threshold (when that IoU is > 0). When several
    boxes force the same anchor, the one with the highest IoU takes it. Padding rows change
    nothing: a batch gives each image the matches it would get alone.

    Returns:
      (matched_gt_index, ignored): [N] (or [B, N]) int32 with -1 for background, and [N]
      (or [B, N]) bool, true for unmatched anchors with IoU >= threshold against an ignored
      box.
    """
    gt_boxes, gt_labels, gt_ignore = _ground_truth(gt_boxes, gt_labels, gt_ignore)
    anchors = center_to_corners(tf.cast(anchors_center, tf.float32))

    overlaps = iou(gt_boxes, anchors)  # [(B,) G, N]
    real = gt_labels > 0
    valid = real & ~gt_ignore
    # A dummy last row with IoU -1 keeps the argmax over boxes defined when G == 0.
    num_anchors = tf.shape(anchors)[0]
    dummy = tf.fill(tf.concat([tf.shape(overlaps)[:-2], [1, num_anchors]], axis=0), -1.0)
    candidate = tf.concat([tf.where(valid[..., None], overlaps, -1.0), dummy], axis=-2)

    best_gt = tf.argmax(candidate, axis=-2, output_type=tf.int32)  # [(B,) N]
    best_iou = tf.reduce_max(candidate, axis=-2)
    matched = tf.where(best_iou >= iou_threshold, best_gt, -1)

    # Forced matches: each valid box's best anchor. forcing[g, n] is true when n is g's best.
    best_anchor = tf.argmax(candidate, axis=-1, output_type=tf.int32)  # [(B,) G + 1]
    forcing = tf.equal(best_anchor[..., None], tf.range(num_anchors))
    forcing &= (tf.reduce_max(candidate, axis=-1) > 0.0)[..., None]  # invalid rows are all -1
    forced_gt = tf.argmax(tf.where(forcing, candidate, -2.0), axis=-2, output_type=tf.int32)
    matched = tf.where(tf.reduce_any(forcing, axis=-2), forced_gt, matched)

    crowd = real & gt_ignore
    crowd_iou = tf.reduce_max(
        tf.concat([tf.where(crowd[..., None], overlaps, -1.0), dummy], axis=-2), axis=-2)
    ignored = (matched < 0) & (crowd_iou >= iou_threshold)
    return matched, ignored


def encode_targets(gt_boxes, gt_labels, anchors_center, iou_threshold=0.5, is_crowd=None,
                   scale_factors=SCALE_FACTORS):
    """SSD training targets for one image, or for a batch of images at once.

    Args:
      gt_boxes: [G, 4] corner boxes, normalized (G may be 0); or [B, G, 4] for a batch of B
        images, each padded to G boxes with label-0 rows (``tf.data.Dataset.padded_batch``).
      gt_labels: [G] (or [B, G]) contiguous class ids >= 1 (a label < 1 marks a padding row).
      anchors_center: [N, 4] (cy, cx, h, w), e.g. ``ssd_anchors(...)``.
      is_crowd: optional [G] (or [B, G]) bools; crowd boxes never match (see
        ``match_anchors``).

    A batch gets exactly the targets its images would get one by one (and costs far less than
    one call per image: a few dozen ops in all, rather than per image).

    Returns:
      box_targets [(B,) N, 4] float32: ``encode_boxes`` of the matched box, zeros elsewhere;
      class_targets [(B,) N] int32: the matched label, 0 for background, -1 (ignore) for
      unmatched anchors with IoU >= ``iou_threshold`` against a crowd box.
    """
    gt_boxes, gt_labels, is_crowd = _ground_truth(gt_boxes, gt_labels, is_crowd)
    anchors_center = tf.cast(anchors_center, tf.float32)
    matched, ignored = match_anchors(gt_boxes, gt_labels, anchors_center, iou_threshold, is_crowd)

    positive = matched >= 0
    # Gather through a dummy last row so that background (and G == 0) indexes something.
    batch_dims = gt_boxes.shape.rank - 2
    num_gt = tf.shape(gt_labels)[-1]
    index = tf.where(positive, matched, num_gt)
    lead = tf.shape(gt_boxes)[:-2]
    dummy_box = tf.broadcast_to([0.0, 0.0, 1.0, 1.0], tf.concat([lead, [1, 4]], axis=0))
    dummy_label = tf.fill(tf.concat([lead, [1]], axis=0), BACKGROUND)
    boxes = tf.gather(tf.concat([gt_boxes, dummy_box], axis=-2), index, batch_dims=batch_dims)
    labels = tf.gather(tf.concat([gt_labels, dummy_label], axis=-1), index,
                       batch_dims=batch_dims)

    box_targets = tf.where(positive[..., None],
                           encode_boxes(boxes, anchors_center, scale_factors), 0.0)
    class_targets = tf.where(positive, labels, tf.where(ignored, IGNORE, BACKGROUND))
    return box_targets, tf.cast(class_targets, tf.int32)
