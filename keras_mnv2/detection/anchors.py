"""SSD anchors (default boxes), as the TF Object Detection API's multiple-grid anchor generator
makes them for SSDLite (paper section 6.2; SSD paper section 2.2, "Choosing scales and aspect
ratios for default boxes").

Boxes are normalized to [0, 1]. Anchors are stored in center-size form ``(cy, cx, h, w)``; corner
form is ``(ymin, xmin, ymax, xmax)`` everywhere in keras_mnv2.
"""

import math
import numbers

import numpy as np

from keras_mnv2.errors import InputError
from keras_mnv2.tensors import ops_for

DEFAULT_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
LOWEST_LAYER_SMALL_SCALE = 0.1  # the extra small square box of the reduced lowest layer


def _layer_scales(num_layers, min_scale, max_scale):
    """s_k = min + (max - min) * k / (L - 1) for k < L, and s_L = 1.0 (for the interpolated box).

    A single layer takes ``min_scale``.
    """
    if num_layers == 1:
        return [float(min_scale), 1.0]
    step = (max_scale - min_scale) / (num_layers - 1)
    return [min_scale + step * k for k in range(num_layers)] + [1.0]


def _layer_box_specs(num_layers, min_scale, max_scale, aspect_ratios,
                     interpolated_scale_aspect_ratio, reduce_boxes_in_lowest_layer):
    """One list of (scale, aspect_ratio) per layer, in the order the boxes sit in a cell."""
    scales = _layer_scales(num_layers, min_scale, max_scale)
    specs = []
    for k in range(num_layers):
        if k == 0 and reduce_boxes_in_lowest_layer:
            boxes = [(LOWEST_LAYER_SMALL_SCALE, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            boxes = [(scales[k], float(r)) for r in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0:
                boxes.append((math.sqrt(scales[k] * scales[k + 1]),
                              float(interpolated_scale_aspect_ratio)))
        specs.append(boxes)
    return specs


def _validate_ratios(aspect_ratios):
    aspect_ratios = tuple(aspect_ratios)
    if not aspect_ratios:
        raise InputError("aspect_ratios must not be empty")
    for r in aspect_ratios:
        if not isinstance(r, numbers.Real) or isinstance(r, bool) or not r > 0:
            raise InputError(f"every aspect ratio must be a number > 0, got {r!r}")
    return aspect_ratios


def num_boxes_per_layer(num_layers, aspect_ratios=DEFAULT_ASPECT_RATIOS,
                        interpolated_scale_aspect_ratio=1.0, reduce_boxes_in_lowest_layer=True):
    """Boxes per feature-map cell for each layer, e.g. ``[3, 6, 6, 6, 6, 6]`` for SSDLite."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise InputError(f"num_layers must be an int >= 1, got {num_layers!r}")
    aspect_ratios = _validate_ratios(aspect_ratios)
    per_layer = len(aspect_ratios) + (1 if interpolated_scale_aspect_ratio > 0 else 0)
    counts = [per_layer] * num_layers
    if reduce_boxes_in_lowest_layer:
        counts[0] = 3
    return counts


def _standardize_sizes(feature_map_sizes):
    sizes = []
    for size in feature_map_sizes:
        pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        if (len(pair) != 2
                or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1
                           for d in pair)):
            raise InputError(
                f"each feature map size must be a positive int or an (H, W) pair of them, "
                f"got {size!r}")
        sizes.append((int(pair[0]), int(pair[1])))
    if not sizes:
        raise InputError("feature_map_sizes must not be empty")
    return sizes


def ssd_anchors(feature_map_sizes, min_scale=0.2, max_scale=0.95,
                aspect_ratios=DEFAULT_ASPECT_RATIOS, interpolated_scale_aspect_ratio=1.0,
                reduce_boxes_in_lowest_layer=True):
    """All anchors of an SSD model as a float32 numpy array [N, 4] of (cy, cx, h, w).

    ``feature_map_sizes`` lists each prediction layer's (H, W) (or one int for a square map),
    from the finest to the coarsest. A box of scale s and aspect ratio r has h = s / sqrt(r),
    w = s * sqrt(r); cell (i, j) of an H x W map is centred at ((i + 0.5) / H, (j + 0.5) / W).
    The order is layer, row, column, box: a head output [B, H, W, boxes * 4] reshaped to
    [B, H * W * boxes, 4] and concatenated over layers lines up with it. At 320 x 320 SSDLite's
    maps are 20, 10, 5, 3, 2, 1, giving 2034 anchors. Anchors are not clipped to the image.
    """
    sizes = _standardize_sizes(feature_map_sizes)
    aspect_ratios = _validate_ratios(aspect_ratios)
    if not 0 < min_scale < max_scale:
        raise InputError(
            f"scales must satisfy 0 < min_scale < max_scale, got {min_scale!r}, {max_scale!r}")
    specs = _layer_box_specs(len(sizes), min_scale, max_scale, aspect_ratios,
                             interpolated_scale_aspect_ratio, reduce_boxes_in_lowest_layer)
    layers = []
    for (height, width), boxes in zip(sizes, specs):
        box_hw = np.array([(s / math.sqrt(r), s * math.sqrt(r)) for s, r in boxes])  # [A, 2]
        cy = (np.arange(height) + 0.5) / height
        cx = (np.arange(width) + 0.5) / width
        centers = np.stack(np.meshgrid(cy, cx, indexing="ij"), axis=-1)  # [H, W, 2]
        grid = np.concatenate([
            np.broadcast_to(centers[:, :, None, :], (height, width, len(boxes), 2)),
            np.broadcast_to(box_hw[None, None], (height, width, len(boxes), 2)),
        ], axis=-1)
        layers.append(grid.reshape(-1, 4))
    return np.concatenate(layers, axis=0).astype(np.float32)


def center_to_corners(boxes):
    """(cy, cx, h, w) -> (ymin, xmin, ymax, xmax), over any leading dimensions (``keras.ops``, or
    TF ops on TF tensors: see ``keras_mnv2.tensors``)."""
    ops = ops_for(boxes)
    cy, cx, h, w = ops.unstack(ops.convert_to_tensor(boxes), num=4, axis=-1)
    return ops.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def corners_to_center(boxes):
    """(ymin, xmin, ymax, xmax) -> (cy, cx, h, w), over any leading dimensions (as above)."""
    ops = ops_for(boxes)
    ymin, xmin, ymax, xmax = ops.unstack(ops.convert_to_tensor(boxes), num=4, axis=-1)
    return ops.stack([0.5 * (ymin + ymax), 0.5 * (xmin + xmax), ymax - ymin, xmax - xmin], axis=-1)
