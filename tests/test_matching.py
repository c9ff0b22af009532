"""IoU, anchor matching and SSD targets on crafted boxes, eagerly and inside tf.data."""

import numpy as np
import tensorflow as tf

from keras_mnv2.detection.matching import encode_targets, iou, match_anchors

# Anchors (cy, cx, h, w): the four image quadrants, then the whole image.
# In corners: A0 (0, 0, .5, .5), A1 (0, .5, .5, 1), A2 (.5, 0, 1, .5), A3 (.5, .5, 1, 1),
# A4 (0, 0, 1, 1).
ANCHORS = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5],
                    [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], "float32")
# GT0 (0, 0, .5, .6), area .3: IoU A0 = .25/.3 = .8333, A1 = .05/.5 = .1, A4 = .3, A2 = A3 = 0.
# GT1 (.5, .5, .8, .8), area .09: IoU A3 = .09/.25 = .36 (under .5: a forced match), A4 = .09.
GT = np.array([[0.0, 0.0, 0.5, 0.6], [0.5, 0.5, 0.8, 0.8]], "float32")
CORNERS = np.array([[0, 0, 0.5, 0.5], [0, 0.5, 0.5, 1], [0.5, 0, 1, 0.5], [0.5, 0.5, 1, 1],
                    [0, 0, 1, 1]], "float32")


def test_iou_by_hand():
    expected = [[0.25 / 0.3, 0.1, 0.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.36, 0.09]]
    np.testing.assert_allclose(iou(GT, CORNERS), expected, atol=1e-6)
    # Degenerate pairs give 0, not NaN.
    np.testing.assert_allclose(iou([[0.2, 0.2, 0.2, 0.2]], [[0.2, 0.2, 0.2, 0.2]]), [[0.0]])


def test_threshold_and_forced_best_anchor():
    matched, ignored = match_anchors(GT, [3, 7], ANCHORS)
    np.testing.assert_array_equal(matched, [0, -1, -1, 1, -1])  # A3 forced to GT1 at IoU .36
    assert matched.dtype == tf.int32 and not np.any(ignored)
    # IoU >= threshold: at .25 the whole-image anchor (IoU .3 with GT0) matches too.
    matched, _ = match_anchors(GT, [3, 7], ANCHORS, iou_threshold=0.25)
    np.testing.assert_array_equal(matched, [0, -1, -1, 1, 0])


def test_forced_conflict_goes_to_highest_iou_and_padding_never_matches():
    # Both boxes' best anchor is A3: GT_B (.55, .55, .8, .8) at IoU .25, GT1 at .36 -> GT1 wins.
    gt = np.array([[0.55, 0.55, 0.8, 0.8], GT[1], GT[0]], "float32")
    matched, _ = match_anchors(gt, [1, 2, 0], ANCHORS)  # label 0: a padding row
    np.testing.assert_array_equal(matched, [-1, -1, -1, 1, -1])


def test_crowd_boxes_are_ignored_not_matched():
    # Crowd box 1 is exactly A2 (IoU 1): A2 is ignored, never forced to match it. Crowd box 2
    # is exactly A0, which GT0 matches: A0 stays matched. Both overlap A4 by IoU .25 < .5.
    gt = np.array([GT[0], [0.5, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 0.5]], "float32")
    crowd = [False, True, True]
    box_targets, class_targets = encode_targets(gt, [3, 5, 5], ANCHORS, is_crowd=crowd)
    np.testing.assert_array_equal(class_targets, [3, 0, -1, 0, 0])
    np.testing.assert_array_equal(box_targets[2], [0, 0, 0, 0])


def test_encode_targets_values():
    box_targets, class_targets = encode_targets(GT, [3, 7], ANCHORS)
    assert box_targets.dtype == tf.float32 and class_targets.dtype == tf.int32
    np.testing.assert_array_equal(class_targets, [3, 0, 0, 7, 0])
    # GT0 (cy .25, cx .3, h .5, w .6) on A0 (.25, .25, .5, .5): (0, .05/.5*10, 0, 5 log 1.2).
    np.testing.assert_allclose(box_targets[0], [0.0, 1.0, 0.0, 5 * np.log(1.2)], atol=1e-5)
    # GT1 (.65, .65, .3, .3) on A3 (.75, .75, .5, .5): (-2, -2, 5 log .6, 5 log .6).
    np.testing.assert_allclose(box_targets[3], [-2.0, -2.0, 5 * np.log(0.6), 5 * np.log(0.6)],
                               atol=1e-5)
    np.testing.assert_array_equal(box_targets.numpy()[[1, 2, 4]], np.zeros((3, 4)))


def test_zero_boxes_and_tf_data_map():
    matched, ignored = match_anchors(np.zeros((0, 4), "float32"), np.zeros((0,), "int32"), ANCHORS)
    np.testing.assert_array_equal(matched, [-1] * 5)
    assert not np.any(ignored)

    def example(boxes, labels, crowd):
        return tf.data.Dataset.from_tensors((np.array(boxes, "float32").reshape(-1, 4),
                                             np.array(labels, "int32"), np.array(crowd, bool)))

    dataset = (example(GT, [3, 7], [False, False])
               .concatenate(example([], [], []))
               .concatenate(example([[0.5, 0.0, 1.0, 0.5]], [2], [True])))
    assert dataset.element_spec[0].shape.as_list() == [None, 4]
    dataset = dataset.map(lambda b, l, c: encode_targets(b, l, ANCHORS, is_crowd=c))
    results = list(dataset.as_numpy_iterator())
    np.testing.assert_array_equal(results[0][1], [3, 0, 0, 7, 0])
    np.testing.assert_array_equal(results[1][1], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(results[1][0], np.zeros((5, 4)))
    np.testing.assert_array_equal(results[2][1], [0, 0, -1, 0, 0])


def _random_images(rng, anchors_center, count, max_boxes=6):
    """Per-image (boxes, labels, crowd): random boxes, boxes equal to an anchor (IoU exactly 1)
    or to each other (ties), crowd boxes, images without boxes, and label-0 padding rows."""
    from keras_mnv2.detection.anchors import center_to_corners

    corners = center_to_corners(anchors_center).numpy()
    images = []
    for i in range(count):
        g = 0 if i % 5 == 0 else int(rng.integers(1, max_boxes + 1))
        ymin, xmin = rng.uniform(0, 0.8, (2, g))
        boxes = np.stack([ymin, xmin, ymin + rng.uniform(0.02, 1 - ymin),
                          xmin + rng.uniform(0.02, 1 - xmin)], axis=-1).astype("float32")
        if g >= 2:
            boxes[1] = corners[rng.integers(len(corners))]  # IoU 1 with an anchor
        if g >= 3:
            boxes[2] = boxes[0]  # two boxes tie for every anchor
        labels = rng.integers(1, 6, g).astype("int32")
        labels[rng.uniform(size=g) < 0.15] = 0  # padding rows in the middle
        crowd = rng.uniform(size=g) < 0.25
        images.append((boxes.reshape(-1, 4), labels, crowd))
    return images


def test_a_padded_batch_gets_exactly_the_targets_of_its_images_one_by_one():
    from keras_mnv2.detection.ssdlite import ssdlite_anchors

    anchors = ssdlite_anchors(96)
    rng = np.random.default_rng(0)
    images = _random_images(rng, anchors, 24)
    one_by_one = [encode_targets(b, l, anchors, is_crowd=c) for b, l, c in images]
    # the pipeline's way: tf.data's padded_batch pads with zeros (label 0) and False
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images), output_signature=(tf.TensorSpec([None, 4], tf.float32),
                                                tf.TensorSpec([None], tf.int32),
                                                tf.TensorSpec([None], tf.bool)))
    batches = dataset.padded_batch(8).map(lambda b, l, c: encode_targets(b, l, anchors,
                                                                         is_crowd=c))
    batched = [(boxes[i], classes[i]) for boxes, classes in batches.as_numpy_iterator()
               for i in range(len(boxes))]
    assert len(batched) == len(images)
    classes = np.stack([c for _, c in batched])
    # the cases are there: matches, ignored anchors, images with no match
    assert (classes > 0).any() and (classes == -1).any() and (classes == 0).all(axis=1).any()
    for (box_targets, class_targets), (boxes, classes) in zip(one_by_one, batched):
        np.testing.assert_array_equal(classes, class_targets.numpy())
        # the same matches, so the same box encodings, but the log of the size terms may round
        # differently by 1 ulp: TF's vectorised log and its scalar tail differ there, and an
        # anchor's place in a packet depends on the tensor's shape
        np.testing.assert_array_max_ulp(boxes, box_targets.numpy(), maxulp=1)
    # and in the batch's own shape, eagerly, with extra padding rows at the end
    boxes, labels, crowd = (np.stack([np.pad(x, [(0, 9 - len(x))] + [(0, 0)] * (x.ndim - 1))
                                      for x in column]) for column in zip(*images[:8]))
    matched, ignored = match_anchors(boxes, labels, anchors, gt_ignore=crowd)
    assert matched.shape == (8, len(anchors)) and ignored.shape == (8, len(anchors))
    for i, (b, l, c) in enumerate(images[:8]):
        single = match_anchors(b, l, anchors, gt_ignore=c)
        np.testing.assert_array_equal(matched[i], single[0])
        np.testing.assert_array_equal(ignored[i], single[1])
