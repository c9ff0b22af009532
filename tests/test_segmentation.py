import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mnv2.segmentation import (
    MeanIoU,
    SegmentationLoss,
    confusion_matrix,
    iou_from_confusion,
)


def _loss(labels, logits, **kwargs):
    return float(SegmentationLoss(**kwargs)(np.asarray(labels), np.asarray(logits, "float32")))


def test_loss_near_zero_for_confident_correct_logits():
    labels = np.array([[[0, 1], [2, 1]]])
    logits = 20.0 * np.eye(3)[labels]  # [1, 2, 2, 3]
    value = _loss(labels, logits)
    assert 0 <= value < 1e-8
    assert _loss(labels, -logits) > 20  # confidently wrong


def test_loss_equals_hand_computed_mean_over_valid_pixels():
    # two images of 1x2 pixels, 2 classes; one pixel ignored
    logits = np.array([[[[0.0, 0.0], [1.0, 0.0]]],
                       [[[0.0, 2.0], [5.0, -5.0]]]], "float32")  # [2, 1, 2, 2]
    labels = np.array([[[0, 1]], [[1, 255]]])
    expected = (math.log(2.0)                     # uniform logits
                + math.log(1 + math.exp(1.0))     # label 1 with logits (1, 0)
                + math.log(1 + math.exp(-2.0))) / 3  # label 1 with logits (0, 2)
    assert _loss(labels, logits) == pytest.approx(expected, rel=1e-6)
    # [B, H, W, 1] labels give the same value
    assert _loss(labels[..., None], logits) == pytest.approx(expected, rel=1e-6)


def test_loss_ignores_255_pixels():
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    labels = rng.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255
    labels[1, 3, 3] = 255
    changed = logits.copy()
    changed[labels == 255] = rng.normal(scale=10.0, size=(int((labels == 255).sum()), 3))
    assert _loss(labels, changed) == pytest.approx(_loss(labels, logits), rel=1e-6)
    # not ignoring anything would be a different value (the test can fail)
    relabelled = np.where(labels == 255, 0, labels)
    assert abs(_loss(relabelled, changed) - _loss(labels, logits)) > 1e-3


def test_loss_all_ignored_is_zero_and_out_of_range_raises():
    logits = np.zeros((1, 2, 2, 3), "float32")
    assert _loss(np.full((1, 2, 2), 255), logits) == 0.0
    with pytest.raises(ValueError, match="< num_classes"):
        _loss(np.array([[[0, 3], [1, 2]]]), logits)
    with pytest.raises(ValueError, match="labels are .* pixels but logits are"):
        _loss(np.zeros((1, 3, 3)), logits)
    with pytest.raises(ValueError, match="ignore_label must be an integer"):
        SegmentationLoss(ignore_label="void")


def test_loss_reductions_and_sample_weight():
    rng = np.random.RandomState(3)
    logits = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    labels = rng.randint(0, 4, (2, 3, 3))
    labels[0, 0] = 255
    per_pixel = np.asarray(SegmentationLoss(reduction="none")(labels, logits))
    assert per_pixel.shape == (2, 3, 3) and np.all(per_pixel[0, 0] == 0)
    np.testing.assert_allclose(per_pixel.sum(), _loss(labels, logits), rtol=1e-6)
    # Per-pixel weights [B, H, W] (e.g. class weights), or per image as [B, 1, 1].
    weighted = SegmentationLoss()(labels, logits,
                                  sample_weight=np.array([0.0, 1.0], "float32")[:, None, None])
    np.testing.assert_allclose(weighted, per_pixel[1].sum(), rtol=1e-6)


def test_loss_serializes():
    loss = SegmentationLoss(ignore_label=0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SegmentationLoss) and again.ignore_label == 0


def test_confusion_matrix_counts_and_ignores_255():
    labels = np.array([[0, 0, 1, 2, 255, 2]])
    predictions = np.array([[0, 1, 1, 1, 2, 2]])
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [0, 1, 1]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), expected)
    # logits with an extra axis, tf tensors and [..., 1] labels give the same
    logits = tf.one_hot(predictions, 3)
    np.testing.assert_array_equal(
        confusion_matrix(tf.constant(labels[..., None]), logits, 3), expected)
    # agrees with tf.math.confusion_matrix on the kept pixels
    keep = labels != 255
    reference = tf.math.confusion_matrix(labels[keep], predictions[keep], 3).numpy()
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), reference)


@pytest.mark.parametrize(
    "labels,predictions,pattern",
    [
        ([0, 3], [0, 1], r"labels must lie in \[0, 3\).*\[3\]"),
        ([0, -1], [0, 1], r"labels must lie in \[0, 3\).*\[-1\]"),
        ([0, 1], [0, 5], r"predictions must lie in \[0, 3\)"),
        ([0, 1, 2], [0, 1], "do not match predictions"),
        ([0.5, 1], [0, 1], "labels must be integer class ids"),
    ],
)
def test_confusion_matrix_bad_input(labels, predictions, pattern):
    with pytest.raises(ValueError, match=pattern):
        confusion_matrix(np.array(labels), np.array(predictions), 3)


def test_iou_from_crafted_confusion_matrix():
    cm = np.array([[3, 1, 0, 0],
                   [2, 4, 0, 0],
                   [0, 0, 0, 0],   # class 2: never labelled, never predicted
                   [0, 1, 0, 0]])  # class 3: labelled once, never predicted right
    mean, per_class = iou_from_confusion(cm)
    # class 0: TP 3, FP 2, FN 1 -> 3/6; class 1: TP 4, FP 2, FN 2 -> 4/8; class 3: 0/1
    np.testing.assert_allclose(per_class[[0, 1, 3]], [0.5, 0.5, 0.0])
    assert math.isnan(per_class[2])
    assert mean == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # class 2 left out of the mean
    assert math.isnan(iou_from_confusion(np.zeros((2, 2)))[0])
    with pytest.raises(ValueError, match="square"):
        iou_from_confusion(np.zeros((2, 3)))


def test_mean_iou_metric_matches_confusion_matrix_and_ignores_255():
    rng = np.random.RandomState(1)
    logits = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    labels = rng.randint(0, 4, (2, 5, 5, 1))
    labels[0, 0] = 255
    metric = MeanIoU(4)
    metric.update_state(labels[:1], logits[:1])
    metric.update_state(labels[1:], logits[1:])  # accumulates over batches
    expected, _ = iou_from_confusion(confusion_matrix(labels, logits, 4))
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    # logits at ignored pixels do not matter
    changed = logits.copy()
    changed[0, 0] = -changed[0, 0]
    other = MeanIoU(4)
    other.update_state(labels, changed)
    assert float(other.result()) == pytest.approx(expected, rel=1e-6)
    assert MeanIoU.from_config(metric.get_config()).ignore_label == 255


def test_loss_and_metric_in_compile(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(optimizer="sgd", loss=SegmentationLoss(), metrics=[MeanIoU(3)])
    rng = np.random.RandomState(2)
    x = rng.uniform(size=(4, 8, 8, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 8, 8))
    y[:, :3] = 255
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    logits = model.predict(x, verbose=0)
    assert result["loss"] == pytest.approx(_loss(y, logits), rel=1e-5)
    assert result["mean_iou"] == pytest.approx(
        iou_from_confusion(confusion_matrix(y, logits, 3))[0], rel=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    assert keras.saving.load_model(path).loss.ignore_label == 255
