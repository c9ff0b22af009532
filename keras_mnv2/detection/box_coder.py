"""Center-size box coder with scale factors (10, 10, 5, 5), as the TF Object Detection API's
``FasterRcnnBoxCoder`` that SSDLite uses (Faster R-CNN, Ren et al., equation 2).

For a box (cy, cx, h, w) and an anchor (cya, cxa, ha, wa):
ty = (cy - cya) / ha * 10, tx = (cx - cxa) / wa * 10, th = log(h / ha) * 5, tw = log(w / wa) * 5.

``keras.ops`` on the Keras backend; TF ops on TF tensors in a ``tf.data`` map under another
backend (see ``keras_mnv2.tensors``).
"""

from keras_mnv2.detection.anchors import center_to_corners, corners_to_center
from keras_mnv2.tensors import ops_for

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
EPSILON = 1e-8  # added to box and anchor sizes before dividing / taking logs, as the OD API does


def encode_boxes(boxes_corners, anchors_center, scale_factors=SCALE_FACTORS):
    """Corner boxes [..., N, 4] vs anchors [N, 4] (cy, cx, h, w) -> [..., N, 4] (ty, tx, th, tw).

    Leading (batch) dimensions broadcast against the anchors. float32 in, float32 out.
    """
    ops = ops_for(boxes_corners, anchors_center)
    boxes = corners_to_center(ops.cast(boxes_corners, "float32"))
    anchors = ops.cast(anchors_center, "float32")
    cy, cx, h, w = ops.unstack(boxes, num=4, axis=-1)
    cya, cxa, ha, wa = ops.unstack(anchors, num=4, axis=-1)
    h, w, ha, wa = h + EPSILON, w + EPSILON, ha + EPSILON, wa + EPSILON
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    return ops.stack([
        (cy - cya) / ha * sy,
        (cx - cxa) / wa * sx,
        ops.log(h / ha) * sh,
        ops.log(w / wa) * sw,
    ], axis=-1)


def decode_boxes(encodings, anchors_center, scale_factors=SCALE_FACTORS):
    """Inverse of ``encode_boxes``: encodings [..., N, 4] -> corner boxes [..., N, 4], unclipped."""
    ops = ops_for(encodings, anchors_center)
    encodings = ops.cast(encodings, "float32")
    anchors = ops.cast(anchors_center, "float32")
    ty, tx, th, tw = ops.unstack(encodings, num=4, axis=-1)
    cya, cxa, ha, wa = ops.unstack(anchors, num=4, axis=-1)
    sy, sx, sh, sw = (float(s) for s in scale_factors)
    center = ops.stack([
        ty / sy * ha + cya,
        tx / sx * wa + cxa,
        ops.exp(th / sh) * ha,
        ops.exp(tw / sw) * wa,
    ], axis=-1)
    return center_to_corners(center)
