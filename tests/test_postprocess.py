"""Post-processing: decoding, softmax / sigmoid scores, class-wise NMS at IoU 0.6."""

import numpy as np
import pytest

from keras_mnv2.detection.anchors import corners_to_center
from keras_mnv2.detection.postprocess import decode_detections

# Anchor corners. A1 and A2 overlap A0 with IoU .152 / .168 = .905 (> .6).
CORNERS = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.1, 0.12, 0.5, 0.52],
                    [0.6, 0.6, 0.9, 0.9]], "float32")
ANCHORS = np.asarray(corners_to_center(CORNERS))


def _outputs():
    encodings = np.zeros((2, 4, 4), "float32")
    # Image 0 decodes to the anchors. Logits (background, class 1, class 2):
    # A0 class 1, softmax score ~ e^3 / (1 + e^3) = .952574; A1 class 1 (.880797), suppressed
    # by A0; A2 class 2 (.731059), kept despite overlapping A0; A3 background, class-2 softmax
    # score 1 / (1 + e^5) = .006693 < .01 (but its sigmoid is .5).
    logits0 = [[0, 3, -10], [0, 2, -10], [0, -10, 1], [5, -10, 0]]
    # Image 1: A0 grows to 1.6 x 1.6 around (.3, .3), i.e. (-.5, -.5, 1.1, 1.1), clipped to the
    # image; class 2 with score ~ e^4 / (1 + e^4) = .982014. The other anchors score ~ 4.5e-5.
    encodings[1, 0] = [0, 0, 5 * np.log(4.0), 5 * np.log(4.0)]
    logits1 = [[0, -10, 4], [10, -10, -10], [10, -10, -10], [10, -10, -10]]
    return encodings, np.array([logits0, logits1], "float32")


def test_softmax_detections():
    encodings, logits = _outputs()
    out = decode_detections(encodings, logits, ANCHORS, max_detections=5)
    assert out["boxes"].shape == (2, 5, 4) and out["classes"].shape == (2, 5)
    np.testing.assert_array_equal(out["num_detections"], [2, 1])
    np.testing.assert_array_equal(out["classes"], [[1, 2, 0, 0, 0], [2, 0, 0, 0, 0]])
    np.testing.assert_allclose(out["scores"], [[0.952574, 0.731059, 0, 0, 0],
                                               [0.982014, 0, 0, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(out["boxes"][0, :2], CORNERS[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(out["boxes"][1, 0], [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(out["boxes"][0, 2:], np.zeros((3, 4)))


def test_focal_scores_and_limits():
    encodings, logits = _outputs()
    out = decode_detections(encodings, logits, ANCHORS, max_detections=5, mode="focal")
    # Sigmoid of the foreground logits: A3's class 2 now scores sigmoid(0) = .5.
    np.testing.assert_array_equal(out["num_detections"], [3, 1])
    np.testing.assert_array_equal(out["classes"][0, :3], [1, 2, 2])
    np.testing.assert_allclose(out["scores"][0, :3], [0.952574, 0.731059, 0.5], atol=1e-5)
    np.testing.assert_allclose(out["scores"][1, 0], 0.982014, atol=1e-5)
    # Total cap, and a looser NMS threshold keeps A1.
    top = decode_detections(encodings, logits, ANCHORS, max_detections=1)
    np.testing.assert_array_equal(top["num_detections"], [1, 1])
    np.testing.assert_array_equal(top["classes"], [[1], [2]])
    loose = decode_detections(encodings, logits, ANCHORS, iou_threshold=0.95, max_detections=5)
    np.testing.assert_array_equal(loose["classes"][0, :3], [1, 1, 2])
    with pytest.raises(ValueError):
        decode_detections(encodings, logits, ANCHORS, mode="hinge")
