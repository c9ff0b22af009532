"""SSD anchors: coordinates checked by hand, SSDLite's count, argument checks."""

import numpy as np
import pytest
import tensorflow as tf

from keras_mnv2.detection.anchors import (center_to_corners, corners_to_center, num_boxes_per_layer,
                                ssd_anchors)


def test_two_layer_anchors_by_hand():
    # Feature maps 2x2 and 1x1, default ratios (1, 2, 1/2, 3, 1/3) + interpolated box.
    # Scales: L = 2 -> s0 = 0.2, s1 = 0.95, s2 = 1.0.
    # Layer 0 (reduced): (0.1, r=1) -> h = w = 0.1;
    #   (0.2, r=2) -> h = 0.2/sqrt2 = 0.14142136, w = 0.2*sqrt2 = 0.28284271; (0.2, r=1/2) swapped.
    #   Cell centers (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75), row by row.
    # Layer 1: center (0.5, 0.5); (0.95, 1) -> 0.95 x 0.95; (0.95, 2) -> 0.67175144 x 1.34350288;
    #   (0.95, 1/2) -> 1.34350288 x 0.67175144; (0.95, 3) -> 0.95/sqrt3 = 0.54848276 x
    #   0.95*sqrt3 = 1.64544827; (0.95, 1/3) swapped; interpolated sqrt(0.95*1.0) = 0.97467943.
    cell = [[0.1, 0.1], [0.14142136, 0.28284271], [0.28284271, 0.14142136]]
    expected = [[cy, cx, h, w] for cy, cx in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25),
                                              (0.75, 0.75)] for h, w in cell]
    expected += [[0.5, 0.5, 0.95, 0.95],
                 [0.5, 0.5, 0.67175144, 1.34350288],
                 [0.5, 0.5, 1.34350288, 0.67175144],
                 [0.5, 0.5, 0.54848276, 1.64544827],
                 [0.5, 0.5, 1.64544827, 0.54848276],
                 [0.5, 0.5, 0.97467943, 0.97467943]]
    anchors = ssd_anchors([2, 1])
    assert anchors.dtype == np.float32 and anchors.shape == (18, 4)
    np.testing.assert_allclose(anchors, np.array(expected), atol=1e-6)


def test_non_square_map_and_unreduced_lowest_layer():
    # Layer 0 is 1 row x 2 columns: centers (0.5, 0.25), (0.5, 0.75); ratio 1 only at s0 = 0.2,
    # then the interpolated box sqrt(0.2 * 0.95) = 0.43588989. Layer 1 (1x1): 0.95, sqrt(0.95).
    anchors = ssd_anchors([(1, 2), (1, 1)], aspect_ratios=(1.0,),
                          reduce_boxes_in_lowest_layer=False)
    expected = [[0.5, 0.25, 0.2, 0.2], [0.5, 0.25, 0.43588989, 0.43588989],
                [0.5, 0.75, 0.2, 0.2], [0.5, 0.75, 0.43588989, 0.43588989],
                [0.5, 0.5, 0.95, 0.95], [0.5, 0.5, 0.97467943, 0.97467943]]
    np.testing.assert_allclose(anchors, expected, atol=1e-6)
    assert num_boxes_per_layer(2, aspect_ratios=(1.0,),
                               reduce_boxes_in_lowest_layer=False) == [2, 2]
    assert len(ssd_anchors([3], aspect_ratios=(1.0, 2.0), interpolated_scale_aspect_ratio=0,
                           reduce_boxes_in_lowest_layer=False)) == 9 * 2


def test_ssdlite_320_count_and_head_layout():
    sizes = [20, 10, 5, 3, 2, 1]
    counts = num_boxes_per_layer(len(sizes))
    assert counts == [3, 6, 6, 6, 6, 6]
    anchors = ssd_anchors(sizes)
    assert anchors.shape == (2034, 4)  # 20*20*3 + (100 + 25 + 9 + 4 + 1) * 6
    assert sum(s * s * n for s, n in zip(sizes, counts)) == 2034
    # Row-major cells, boxes innermost: the 2nd cell of the 20x20 map starts at index 3.
    np.testing.assert_allclose(anchors[3], [0.025, 0.075, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(anchors[-1, :2], [0.5, 0.5])


@pytest.mark.parametrize("kwargs", [
    dict(feature_map_sizes=[]),
    dict(feature_map_sizes=[2], min_scale=0.9, max_scale=0.9),
    dict(feature_map_sizes=[2], aspect_ratios=(1.0, 0.0)),
    dict(feature_map_sizes=[2], aspect_ratios=(1.0, -2.0)),
    dict(feature_map_sizes=[(2, 0)]),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ssd_anchors(**kwargs)


def test_center_corner_round_trip_with_leading_dims():
    corners = tf.constant([[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]]])
    center = corners_to_center(corners)
    np.testing.assert_allclose(center[0, 0], [0.3, 0.55, 0.4, 0.7], atol=1e-6)
    np.testing.assert_allclose(center_to_corners(center), corners, atol=1e-6)
