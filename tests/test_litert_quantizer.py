"""LiteRT Quantizer (export quantizer="litert") on SSDLite with its detection post-process op."""

import keras
import numpy as np
import pytest

import keras_mnv2
from keras_mnv2.deploy import export, tflite
from test_keras_qat import perturbed


def detector(seed=0):
    """A small SSDLite whose untrained head gives detections: trained-looking batch-norm
    statistics, and a background bias of 1 instead of the prior's (which keeps every foreground
    score of an untrained head under the 0.01 NMS threshold: no detection to compare)."""
    keras.utils.set_random_seed(seed)
    model = perturbed(keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96), seed)
    for i in range(6):
        head = model.get_layer(f"class_predictor_{i}")
        kernel, bias = head.get_weights()
        bias[:] = 0.0
        bias[::4] = 1.0  # 4 logits per anchor: the background first
        head.set_weights([kernel, bias])
    return model


def box_iou(a, b):
    """IoU matrix of boxes [N, 4] and [M, 4] (ymin, xmin, ymax, xmax)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area_a, area_b = (np.prod(t[:, 2:] - t[:, :2], axis=-1) for t in (a, b))
    return inter / (area_a[:, None] + area_b[None] - inter)


@pytest.mark.slow
def test_litert_ssdlite_keeps_float_detections_that_match_the_float_file(images, tmp_path):
    model = detector()
    x = images(8)
    report = export.export_tflite(model, tmp_path / "litert.tflite", mode="int8",
                                  representative_data=x, quantizer="litert")
    float_file = export.export_tflite(model, tmp_path / "float.tflite")
    # float32 I/O as promised (the bare static recipe made the image input and the four detection
    # outputs int8: class ids and counts then came back a fraction below the integer)
    assert report.input[2] == "float32"
    assert {dtype for _, dtype in report.outputs.values()} == {"float32"}
    assert report.float_ops == ("TFLite_Detection_PostProcess",)
    got = tflite.run_signature(report.path, x)
    expected = tflite.run_signature(float_file.path, x)
    classes = got["detection_classes"]
    assert set(np.unique(classes)) <= {0.0, 1.0, 2.0}  # whole 0-based class ids
    np.testing.assert_array_equal(got["num_detections"], expected["num_detections"])
    # Scores: the int8 softmax output has a step of 1/256; over model seeds 0-3 the sorted scores
    # of each image stayed within 0.0021-0.0032 of the float file's: two steps is the bound.
    np.testing.assert_allclose(np.sort(got["detection_scores"], -1),
                               np.sort(expected["detection_scores"], -1), atol=2 / 256)
    # Detections: each one scoring more than that bound above the float file's lowest kept score
    # cannot have been rounded into the list, so the float file has it too (same class, box at
    # IoU > 0.9); the rest are near-ties at the cut of 100 (of 204 anchors x 3 classes). Over
    # model seeds 0-3 all of them matched (1.00), the bare recipe's file 0.33-0.96 (0.62 here).
    matched = []
    for i in range(len(x)):
        kept = int(expected["num_detections"][i])
        sure = got["detection_scores"][i] > expected["detection_scores"][i, :kept].min() + 2 / 256
        same_class = classes[i][:, None] == expected["detection_classes"][i][None]
        overlap = box_iou(got["detection_boxes"][i], expected["detection_boxes"][i]) > 0.9
        assert sure.sum() >= 10  # 24 here: enough to compare
        matched.append((same_class & overlap).any(axis=1)[sure].mean())
    assert min(matched) >= 0.95
