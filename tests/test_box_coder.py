"""Center-size box coder (10, 10, 5, 5): a hand-computed encoding and encode/decode round trips."""

import keras
import numpy as np
import tensorflow as tf

from keras_mnv2.detection.anchors import ssd_anchors
from keras_mnv2.detection.box_coder import decode_boxes, encode_boxes


def test_encoding_by_hand():
    # Anchor (cy, cx, h, w) = (0.5, 0.5, 0.2, 0.4); box center (0.55, 0.4), size 0.4 x 0.2.
    # ty = 0.05 / 0.2 * 10 = 2.5; tx = -0.1 / 0.4 * 10 = -2.5;
    # th = log(0.4 / 0.2) * 5 = 3.4657359; tw = log(0.2 / 0.4) * 5 = -3.4657359.
    anchors = tf.constant([[0.5, 0.5, 0.2, 0.4]])
    box = tf.constant([[0.35, 0.3, 0.75, 0.5]])
    np.testing.assert_allclose(encode_boxes(box, anchors), [[2.5, -2.5, 3.4657359, -3.4657359]],
                               atol=1e-5)
    # A box equal to its anchor encodes to zeros.
    same = tf.constant([[0.4, 0.3, 0.6, 0.7]])
    np.testing.assert_allclose(encode_boxes(same, anchors), [[0.0, 0.0, 0.0, 0.0]], atol=1e-5)


def test_round_trip_with_batch_dimension():
    anchors = ssd_anchors([4, 2, 1])  # 4*4*3 + 4*6 + 6 = 78 anchors
    rng = np.random.RandomState(0)
    ymin, xmin = rng.uniform(0, 0.6, (2, 2, 78))
    height, width = rng.uniform(0.02, 0.4, (2, 2, 78))
    boxes = np.stack([ymin, xmin, ymin + height, xmin + width], axis=-1).astype("float32")
    encoded = encode_boxes(boxes, anchors)
    assert tuple(encoded.shape) == (2, 78, 4)
    assert keras.backend.standardize_dtype(encoded.dtype) == "float32"
    np.testing.assert_allclose(decode_boxes(encoded, anchors), boxes, atol=1e-5)
    # Each image of the batch is coded against the same anchors.
    np.testing.assert_allclose(encoded[1], encode_boxes(boxes[1], anchors), atol=1e-6)


def test_custom_scale_factors_and_graph_mode():
    anchors = tf.constant([[0.5, 0.5, 0.2, 0.4]])
    box = tf.constant([[0.35, 0.3, 0.75, 0.5]])

    @tf.function
    def code(b):
        enc = encode_boxes(b, anchors, scale_factors=(1.0, 1.0, 1.0, 1.0))
        return enc, decode_boxes(enc, anchors, scale_factors=(1.0, 1.0, 1.0, 1.0))

    enc, dec = code(box)
    np.testing.assert_allclose(enc, [[0.25, -0.25, np.log(2.0), -np.log(2.0)]], atol=1e-5)
    np.testing.assert_allclose(dec, box, atol=1e-5)
