"""SSD losses: exact values on crafted targets, hard-negative counts, ignore, focal by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mnv2.detection.losses import SSDBoxLoss, SSDClassLoss, ssd_losses


def _cross_entropy(logits, label):
    logits = np.asarray(logits, "float64")
    return np.log(np.sum(np.exp(logits))) - logits[label]


def test_box_loss_exact_value_and_perfect_prediction():
    # Image 0: classes (1, 0, -1); image 1: (2, 1, 0). Three positives in the batch.
    targets = np.zeros((2, 3, 5), "float32")
    targets[..., :4] = np.random.RandomState(0).normal(size=(2, 3, 4))
    targets[..., 4] = [[1, 0, -1], [2, 1, 0]]
    preds = targets[..., :4].copy()
    preds[0, 0] += [0.5, -2.0, 0, 0]   # 0.5 * .25 + (2 - .5) = 1.625
    preds[0, 1] += 7.0                 # background: not counted
    preds[0, 2] += 7.0                 # ignored: not counted
    preds[1, 0] += [1.0, 0, 0, 0]      # |x| = 1: 1 - .5 = .5
    preds[1, 1] += [0.2, 0, 0, -0.4]   # .5 * (.04 + .16) = .1
    preds[1, 2] += 3.0                 # background
    loss = SSDBoxLoss()
    np.testing.assert_allclose(loss(targets, preds), (1.625 + 0.5 + 0.1) / 3, rtol=1e-6)
    # Per image, its positives' smooth L1 over the batch's P = 3 (no batch-size factor).
    per_image = SSDBoxLoss(reduction="none")(targets, preds)
    np.testing.assert_allclose(per_image, [1.625 / 3, 0.6 / 3], rtol=1e-6)
    assert float(loss(targets, targets[..., :4])) == 0.0
    targets[..., 4] = 0  # no positives: 0, not NaN
    assert float(loss(targets, preds)) == 0.0


def _mining_batch():
    rng = np.random.RandomState(1)
    labels = np.zeros((3, 12), "int32")
    logits = rng.normal(size=(3, 12, 3)).astype("float32") * 3
    labels[0, 0] = 2                     # image 0: 1 positive, 10 negatives, 1 ignored
    labels[0, 11] = -1
    labels[1, :2] = [1, 2]               # image 1: 2 positives -> 6 hard negatives of 10
    labels[2, 5:] = -1                   # image 2: no positive -> min_negatives = 3 of 5
    logits[0, 11] = [30.0, -30.0, -30.0]  # an ignored anchor with a huge loss for any label > 0
    return labels, logits


def test_hard_negative_mining_counts():
    labels, logits = _mining_batch()
    ce = np.array([[_cross_entropy(logits[b, n], max(labels[b, n], 0)) for n in range(12)]
                   for b in range(3)])
    neg0 = np.sort(ce[0, 1:11])[::-1]
    assert len(set(np.round(neg0, 6))) == 10  # distinct losses, so "the 3 largest" is defined
    expected = (ce[0, 0] + neg0[:3].sum()
                + ce[1, :2].sum() + np.sort(ce[1, 2:])[::-1][:6].sum()
                + np.sort(ce[2, :5])[::-1][:3].sum()) / 3  # 3 positives in the batch
    np.testing.assert_allclose(SSDClassLoss()(labels, logits), expected, rtol=1e-5)
    # One image alone: positive CE + the 3 largest of its 10 negative CEs, over 1 positive.
    np.testing.assert_allclose(SSDClassLoss()(labels[:1], logits[:1]),
                               ce[0, 0] + neg0[:3].sum(), rtol=1e-5)
    np.testing.assert_allclose(SSDClassLoss(negatives_per_positive=5)(labels[:1], logits[:1]),
                               ce[0, 0] + neg0[:5].sum(), rtol=1e-5)


def test_ignored_anchors_never_count():
    labels, logits = _mining_batch()
    base = float(SSDClassLoss()(labels, logits))
    changed = logits.copy()
    changed[0, 11] = [-50.0, 50.0, 0.0]
    changed[2, 5:] = 40.0 * np.random.RandomState(2).normal(size=(7, 3))
    for mode in ("softmax", "focal"):
        assert np.isclose(float(SSDClassLoss(mode=mode)(labels, changed)),
                          float(SSDClassLoss(mode=mode)(labels, logits)), rtol=1e-6)
    assert np.isclose(float(SSDClassLoss()(labels, changed)), base, rtol=1e-6)


def test_confident_correct_logits_give_near_zero_loss():
    labels = np.array([[1, 0, 2, -1, 0]], "int32")
    logits = np.full((1, 5, 3), -20.0, "float32")
    logits[0, np.arange(5), np.maximum(labels[0], 0)] = 20.0
    for mode in ("softmax", "focal"):
        assert float(SSDClassLoss(mode=mode)(labels, logits)) < 1e-6


def test_focal_by_hand():
    # Anchor 0 is class 1 with foreground logits (0, 0): p = .5 for both classes.
    #   class 1 (target 1): .25 * .5^2 * log 2 = .0433217; class 2 (target 0): .75 * .5^2 * log 2
    #   = .1299651.
    # Anchor 1 is background with logits (0, ln 3): class 1 .1299651; class 2 p = .75, p_t = .25:
    #   .75 * .75^2 * -log(.25) = .5848429.
    # Anchor 2 is ignored. Column 0 is never used. Sum .8880948 over 1 positive.
    labels = np.array([[1, 0, -1]], "int32")
    logits = np.array([[[9.0, 0.0, 0.0], [-9.0, 0.0, np.log(3.0)], [0.0, 50.0, -50.0]]], "float32")
    np.testing.assert_allclose(SSDClassLoss(mode="focal")(labels, logits), 0.8880948, rtol=1e-5)


def test_reductions_and_sample_weight_act_as_on_any_keras_loss():
    labels, logits = _mining_batch()
    per_image = np.asarray(SSDClassLoss(reduction="none")(labels, logits))
    assert per_image.shape == (3,) and np.all(per_image > 0)
    total = float(SSDClassLoss()(labels, logits))
    np.testing.assert_allclose(per_image.sum(), total, rtol=1e-6)
    np.testing.assert_allclose(
        SSDClassLoss(reduction="sum_over_batch_size")(labels, logits), total / 3, rtol=1e-6)
    # A per-image weight scales that image's share; the normalizer stays the batch's P.
    weighted = SSDClassLoss()(labels, logits, sample_weight=np.array([1.0, 0.0, 2.0], "float32"))
    np.testing.assert_allclose(weighted, per_image[0] + 2 * per_image[2], rtol=1e-6)
    # An explicit normalizer replaces max(1, P) = 3.
    np.testing.assert_allclose(SSDClassLoss(normalizer=6.0)(labels, logits), total / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="normalizer must be"):
        SSDBoxLoss(normalizer=0)


def test_serialization_and_bad_mode():
    loss = SSDClassLoss(mode="focal", negatives_per_positive=2, min_negatives=0, gamma=1.5)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, SSDClassLoss)
    assert (clone.mode, clone.negatives_per_positive, clone.min_negatives, clone.gamma) == \
        ("focal", 2, 0, 1.5)
    assert isinstance(SSDBoxLoss.from_config(SSDBoxLoss().get_config()), SSDBoxLoss)
    with pytest.raises(ValueError):
        SSDClassLoss(mode="hinge")


def test_compile_and_fit_with_dict_outputs():
    num_anchors, num_classes = 6, 2
    inputs = keras.Input((4,))
    boxes = keras.layers.Reshape((num_anchors, 4), name="boxes")(
        keras.layers.Dense(num_anchors * 4)(inputs))
    classes = keras.layers.Reshape((num_anchors, num_classes + 1), name="classes")(
        keras.layers.Dense(num_anchors * (num_classes + 1))(inputs))
    model = keras.Model(inputs, {"boxes": boxes, "classes": classes})
    losses = ssd_losses(mode="softmax")
    assert set(losses) == {"boxes", "classes"}
    model.compile(optimizer="sgd", loss=losses)
    class_targets = np.array([[1, 0, 0, 2, -1, 0]] * 4, "int32")
    box_targets = np.concatenate([np.zeros((4, num_anchors, 4), "float32"),
                                  class_targets[..., None].astype("float32")], axis=-1)
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((4, 4), "float32"), {"boxes": box_targets, "classes": class_targets})).batch(2)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_giou_hand_computed_values():
    from keras_mnv2.detection.losses import giou

    boxes_a = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]], "float32")
    boxes_b = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 3, 3], [0, 0, 1, 2]], "float32")
    # identical: 1; overlap 1 of union 7, enclosing 9: 1/7 - 2/9; disjoint: union 2, enclosing 9:
    # -7/9; B inside A (area 2 of 4, enclosing = A): 1/2
    expected = [1.0, 1 / 7 - 2 / 9, -7 / 9, 0.5]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(giou(boxes_a, boxes_b)), expected,
                               rtol=1e-6)


def _giou_batch():
    """Anchors, targets for 2 images x 4 anchors (a positive, background, ignored, a positive in
    image 0; a positive and background in image 1) and the true corner boxes of the positives."""
    from keras_mnv2.detection.box_coder import encode_boxes

    anchors = np.array([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.4, 0.6], [0.7, 0.3, 0.2, 0.2],
                        [0.6, 0.6, 0.3, 0.3]], "float32")
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.3, 0.2, 0.7, 0.8], [0.6, 0.2, 0.8, 0.4],
                       [0.5, 0.4, 0.8, 0.7]],
                      [[0.1, 0.1, 0.4, 0.3], [0.3, 0.2, 0.7, 0.8], [0.6, 0.2, 0.8, 0.4],
                       [0.4, 0.5, 0.7, 0.8]]], "float32")
    targets = np.zeros((2, 4, 5), "float32")
    targets[..., :4] = keras.ops.convert_to_numpy(encode_boxes(boxes, anchors))
    targets[..., 4] = [[1, 0, -1, 3], [2, 0, 0, 0]]
    return anchors, boxes, targets


def test_giou_loss_perfect_prediction_and_exact_value():
    from keras_mnv2.detection.box_coder import encode_boxes
    from keras_mnv2.detection.losses import SSDGIoULoss

    anchors, boxes, targets = _giou_batch()
    loss = SSDGIoULoss(anchors)
    assert abs(float(loss(targets, targets[..., :4]))) < 1e-5  # decode(encode) = the box
    # Predicted boxes: image 0 anchor 0 shifted to (1, 1, 3, 3) quarter-units of (0, 0, 2, 2)
    # (GIoU 1/7 - 2/9); image 0 anchor 3 exact (0); image 1 anchor 0 disjoint from its target in
    # the same enclosing-area proportion as (0, 0, 1, 1) vs (2, 2, 3, 3) (GIoU -7/9).
    predicted = boxes.copy()
    predicted[0, 0] = [0.25, 0.25, 0.75, 0.75]
    predicted[1, 0] = [0.1, 0.1, 0.2, 0.2]  # vs a target of (0.3, 0.3, 0.4, 0.4)
    targets[1, 0, :4] = keras.ops.convert_to_numpy(
        encode_boxes(np.array([[0.3, 0.3, 0.4, 0.4]], "float32"), anchors[:1]))[0]
    preds = keras.ops.convert_to_numpy(encode_boxes(predicted, anchors))
    preds[0, 1:3] = 50.0  # background and ignored anchors: never counted, never NaN
    preds[1, 1:] = -50.0
    expected = 10.0 * ((1 - (1 / 7 - 2 / 9)) + 0 + (1 + 7 / 9)) / 3  # weight 10, 3 positives
    np.testing.assert_allclose(loss(targets, preds), expected, rtol=1e-4)
    per_image = SSDGIoULoss(anchors, weight=2.0, reduction="none")(targets, preds)
    np.testing.assert_allclose(per_image, [2.0 * (1 - (1 / 7 - 2 / 9)) / 3,
                                           2.0 * (1 + 7 / 9) / 3], rtol=1e-4)
    targets[..., 4] = 0  # no positives: 0, not NaN
    assert float(loss(targets, preds)) == 0.0
    clone = SSDGIoULoss.from_config(loss.get_config())
    np.testing.assert_array_equal(clone.anchors, anchors)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradient by tf.GradientTape")
def test_giou_loss_gradient_is_finite():
    from keras_mnv2.detection.losses import SSDGIoULoss

    anchors, _, targets = _giou_batch()
    preds = tf.Variable(np.random.RandomState(0).normal(size=(2, 4, 4)).astype("float32"))
    diverging = np.zeros((2, 4, 4), "float32")
    diverging[0, 0, 2:] = 1e4  # a size prediction on a positive: exp(1e4 / 5) overflows unclipped
    with tf.GradientTape() as tape:
        value = SSDGIoULoss(anchors)(targets, preds + diverging)
    gradient = tape.gradient(value, preds).numpy()
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient))
    assert np.any(gradient[0, 3] != 0) and np.all(gradient[0, 1:3] == 0)  # positives only


def test_box_loss_choice():
    from keras_mnv2.detection.losses import SSDGIoULoss
    from keras_mnv2.errors import InputError
    from pipelines.jobs import detection

    # The paper recipe keeps the smooth L1 loss, with the same value as before the option; the
    # embedded recipe takes GIoU on its own anchors
    box = detection.losses(detection.PAPER)["boxes"]
    assert type(box) is SSDBoxLoss
    anchors, _, targets = _giou_batch()
    preds = np.random.RandomState(2).normal(size=(2, 4, 4)).astype("float32")
    np.testing.assert_allclose(box(targets, preds), SSDBoxLoss()(targets, preds), rtol=1e-7)
    giou = detection.losses(detection.EMBEDDED)["boxes"]
    assert isinstance(giou, SSDGIoULoss) and giou.anchors.shape[1] == 4
    assert len(giou.anchors) == len(detection.build_model(detection.EMBEDDED, 2).anchors)
    with pytest.raises(InputError, match="anchors"):
        ssd_losses(box_loss="giou")
    with pytest.raises(InputError, match="box_loss"):
        ssd_losses(box_loss="l2")
    with pytest.raises(ValueError, match="box_loss"):
        detection.check_recipe(dataclasses_replace(detection.EMBEDDED, box_loss="iou"))


def dataclasses_replace(recipe, **changes):
    import dataclasses

    return dataclasses.replace(recipe, **changes)
