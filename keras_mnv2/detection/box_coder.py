"""Center-size box coder with scale factors (10, 10, 5, 5), as the TF Object Detection API's
``FasterRcnnBoxCoder`` that SSDLite uses (Faster R-CNN, Ren et al., equation 2).

For a box (cy, cx, h, w) and an anchor (cya, cxa, ha, wa):
ty = (cy - cya) / ha * 10, tx = (cx - cxa) / wa * 10, th = log(h / ha) * 5, tw = log(w / wa) * 5.
"""

import tensorflow as tf

from keras_mnv2.detection.anchors import center_to_corners, corners_to_center

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
EPSILON = 1e-8  # added to box and anchor sizes before dividing / taking logs, as the OD API does


def encode_boxes(boxes_corners, anchors_center, scale_factors=SCALE_FACTORS):
    """Corner boxes [..., N, 4] vs anchors [N, 4] (cy, cx, h, w) -> [..., N, 4] (ty, tx, th, tw).

    Leading (batch) dimensions broadcast against the anchors. float32 in, float32 out.
    """
    boxes = corners_to_center(tf.cast(boxes_corners, tf.float32))
    anchors = tf.cast(anchors_center, tf.float32)
    cy, cx, h, w = tf.unstack(boxes, num=4, axis=-1)
    cya, cxa, ha, wa = tf.unstack(anchors, num=4, axis=-1)
    h, w, ha, wa = h + EPSILON, w + EPSILON, ha + EPSILON, wa + EPSILON
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    return tf.stack([
        (cy - cya) / ha * sy,
        (cx - cxa) / wa * sx,
        tf.math.log(h / ha) * sh,
        tf.math.log(w / wa) * sw,
    ], axis=-1)


def decode_boxes(encodings, anchors_center, scale_factors=SCALE_FACTORS):
    """Inverse of ``encode_boxes``: encodings [..., N, 4] -> corner boxes [..., N, 4], unclipped."""
    encodings = tf.cast(encodings, tf.float32)
    anchors = tf.cast(anchors_center, tf.float32)
    ty, tx, th, tw = tf.unstack(encodings, num=4, axis=-1)
    cya, cxa, ha, wa = tf.unstack(anchors, num=4, axis=-1)
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    center = tf.stack([
        ty / sy * ha + cya,
        tx / sx * wa + cxa,
        tf.exp(th / sh) * ha,
        tf.exp(tw / sw) * wa,
    ], axis=-1)
    return center_to_corners(center)
