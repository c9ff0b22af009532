"""MobileNetV2's architecture as data: paper Table 2, the per-block plan (strides, atrous rates,
expansion splits) and the width rules. Shared by the builders, split-expansion and the official
weight converter, and importing none of them."""

import re

import numpy as np

from keras_mnv2.blocks import make_divisible
from keras_mnv2.errors import InputError

# Paper Table 2: expansion t, output channels c, repeats n, first stride s.
BLOCK_SPECS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

OUTPUT_STRIDES = (8, 16, 32, None)
# More groups than this only add layers (the saving of section 5.1 is already near its limit at
# a few groups); 1000 would build for minutes with 21,265 layers.
MAX_EXPANSION_SPLITS = 64


def block_plan(output_stride=None):
    """Expands the spec table into one entry per block: (block_id, t, c, stride, dilation).

    With ``output_stride`` set, the TF-slim rule applies: once the running stride reaches the
    target, a later stride-2 block runs at stride 1 with the current rate, and the rate then
    doubles for the blocks after it (atrous convolution, DeepLabv3 section 3.1).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise InputError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    plan = []
    current_stride, rate, block_id = 2, 1, 0  # Conv1 has stride 2.
    for t, c, n, s in BLOCK_SPECS:
        for i in range(n):
            stride = s if i == 0 else 1
            if output_stride is not None and current_stride == output_stride:
                layer_stride, layer_rate = 1, rate
                rate *= stride
            else:
                layer_stride, layer_rate = stride, 1
                current_stride *= stride
            plan.append((block_id, t, c, layer_stride, layer_rate))
            block_id += 1
    return tuple(plan)


def splits_per_block(expansion_splits=1, whole=(), argument="expansion_splits"):
    """One expansion split count per block of ``block_plan()`` (paper section 5.1).

    ``expansion_splits`` is an integer k >= 1 (every block) or a sequence with one count per
    block. ``whole`` names layers whose output must exist as one tensor (e.g. the SSDLite tap
    ``block_13_expand_relu``): their blocks keep a count of 1.
    """
    num_blocks = len(block_plan())
    if isinstance(expansion_splits, (int, np.integer)) and not isinstance(expansion_splits, bool):
        counts = [expansion_splits] * num_blocks
    elif isinstance(expansion_splits, (list, tuple)) and len(expansion_splits) == num_blocks:
        counts = list(expansion_splits)
    else:
        counts = [0]
    if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not
           1 <= c <= MAX_EXPANSION_SPLITS for c in counts):
        raise InputError(
            f"{argument} must be an integer >= 1 or a sequence of {num_blocks} of them (one per "
            f"block), each at most {MAX_EXPANSION_SPLITS}, got {expansion_splits!r}"
        )
    counts = [int(c) for c in counts]
    for name in whole:
        match = re.fullmatch(r"block_(\d+)_(expand|expand_BN|expand_relu|pad|depthwise|"
                             r"depthwise_BN|depthwise_relu|project)", name)
        if match and int(match.group(1)) < num_blocks:
            counts[int(match.group(1))] = 1
        elif re.fullmatch(r"Conv1|bn_Conv1|Conv1_relu|expanded_conv_(depthwise|depthwise_BN|"
                          r"depthwise_relu|project)", name):
            counts[0] = 1
    return tuple(counts)


def channel_rounding(alpha, divisible_by=8, min_depth=None):
    """The width rule of ``MobileNetV2``: a function from a paper width c to the built width.

    The default ``(8, None)`` is keras.applications' rule (``make_divisible(int(c * alpha))``
    in the blocks, ``make_divisible(c * alpha)`` for Conv1 and the last conv); anything else is
    TF-slim's ``make_divisible(c * alpha, divisible_by, min_depth)`` everywhere.
    """
    if not isinstance(divisible_by, int) or isinstance(divisible_by, bool) or divisible_by < 1:
        raise InputError(f"divisible_by must be an integer >= 1, got {divisible_by!r}")
    if min_depth is not None and (not isinstance(min_depth, int) or isinstance(min_depth, bool)
                                  or min_depth < 1):
        raise InputError(f"min_depth must be None or an integer >= 1, got {min_depth!r}")
    if (divisible_by, min_depth) == (8, None):
        return lambda c, stem=False: make_divisible(c * alpha if stem else int(c * alpha))
    return lambda c, stem=False: make_divisible(c * alpha, divisible_by, min_depth)
