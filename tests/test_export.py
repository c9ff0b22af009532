import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mnv2
from keras_mnv2.deploy import export, tflite
from keras_mnv2.detection.box_coder import decode_boxes
from keras_mnv2.detection.postprocess import class_scores, decode_detections


def pattern_images(per_class=4, classes=4, size=96, seed=0):
    """A fixture of four image classes (stripes of a class-specific frequency, orientation and
    colour), values in [-1, 1]."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            wave = np.sin(2 * np.pi * (3 + 2 * c + rng.uniform(-0.5, 0.5)) * (xx if c % 2 else yy)
                          + rng.uniform(0, 6))
            image = np.stack([wave * (0.5 + 0.5 * (k == c % 3)) for k in range(3)], -1)
            images.append(np.clip(image + rng.normal(0, 0.1, image.shape), -1, 1))
            labels.append(c)
    return np.asarray(images, "float32"), np.asarray(labels)


def calibrate(model, images, residual_scale=0.2):
    """Batch-norm statistics from ``images`` for a model built with bn_momentum=0, with the
    residual branches' projections scaled by ``residual_scale`` (then the statistics again).

    A random MobileNetV2 with unit-variance activations is chaotic: int8 rounding errors grow
    from block to block (feature correlation with float ~0.67 at block 16, against ~0.99 with
    residual branches at 0.2, closer to what training gives), which would make int8 agreement
    tests measure the random weights rather than the conversion.
    """
    model(images, training=True)  # momentum 0: the moving statistics become the batch's
    if residual_scale != 1.0:
        residual = {layer.name[:-len("add")] for layer in model.layers
                    if layer.name.endswith("_add")}
        for layer in model.layers:
            if layer.name.endswith("project_BN") and layer.name[:-len("project_BN")] in residual:
                gamma, *rest = layer.get_weights()
                layer.set_weights([residual_scale * gamma, *rest])
        model(images, training=True)
    return model


def probe_classifier(images, labels, classes=4, seed=0):
    """MobileNetV2 (alpha 0.35, logits), ``calibrate``d on ``images``, with a ridge-regression
    top fitted to ``labels``: a classifier with clear margins on the fixture, without training."""
    keras.utils.set_random_seed(seed)
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=images.shape[1:], classes=classes,
                                   classifier_activation=None, dropout_rate=0.0, bn_momentum=0.0)
    calibrate(model, images)
    features = keras.Model(model.inputs, model.get_layer("global_average_pooling2d").output)
    f = features.predict(images, verbose=0)
    mean = f.mean(0)
    z = f - mean
    target = 8.0 * (np.eye(classes)[labels] - 1.0 / classes)
    ridge = 10.0 * np.trace(z.T @ z) / z.shape[1]
    kernel = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ target)
    model.get_layer("predictions").set_weights([kernel.astype("float32"),
                                                (-mean @ kernel).astype("float32")])
    return model


@pytest.fixture(scope="module")
def probe():
    images, labels = pattern_images()
    return probe_classifier(images, labels), images, labels


def tiny_classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="tiny")


def spread_ssdlite(input_size=96):
    """A small SSDLite whose class scores vary across anchors (as a trained one's do)."""
    keras.utils.set_random_seed(0)
    model = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=input_size,
                               background_prior=None)
    rng = np.random.RandomState(4)
    model.set_weights([w + rng.uniform(0, 0.1, w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    for layer in model.layers:
        if layer.name.startswith("class_predictor_") and layer.name[-1].isdigit():
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 30, bias])
    return model


def box_iou(a, b):
    """IoU of corner boxes [N, 4] and [M, 4] -> [N, M]."""
    a, b = a[:, None], b[None]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                       None))
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_float32_classifier_probabilities_agree_with_keras(probe, tmp_path):
    model, images, labels = probe
    logits = model.predict(images, verbose=0)
    assert (logits.argmax(-1) == labels).all()  # the fixture classifier works
    report = export.export_tflite(model, tmp_path / "float.tflite")
    assert os.path.exists(report.path) and not os.path.exists(report.path + ".part")
    assert report.size_bytes == os.path.getsize(report.path)
    assert report.input == ("image", (1, 96, 96, 3), "float32")
    assert report.outputs == {"probabilities": ((1, 4), "float32")}
    assert report.ops["SOFTMAX"] == 1  # appended to the logits model
    probabilities = tflite.run_signature(report.path, images)["probabilities"]
    expected = tf.nn.softmax(logits).numpy()
    print("max |TFLite - Keras| probability", np.abs(probabilities - expected).max())
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_int8_classifier_agrees_within_quantization_tolerance(probe, tmp_path):
    model, images, _ = probe
    report = export.export_tflite(model, tmp_path / "int8.tflite", mode="int8",
                                  representative_data=images, io_dtype="int8", output="logits")
    assert report.input[2] == "int8" and report.outputs["logits"][1] == "int8"
    assert report.float_ops == ()  # full integer: nothing computes in float
    assert report.ops["CONV_2D"] == 35 and report.ops["DEPTHWISE_CONV_2D"] == 17
    expected = model.predict(images, verbose=0)
    got = tflite.run_signature(report.path, images)["logits"]
    agreement = (got.argmax(-1) == expected.argmax(-1)).mean()
    correlation = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    print(f"int8 vs float: top-1 agreement {agreement:.3f}, logit correlation {correlation:.3f}, "
          f"size {report.size_bytes} bytes")
    assert agreement >= 0.9
    assert correlation > 0.97
    float_bytes = 4 * model.count_params()
    print("int8 file / float32 weights", report.size_bytes / float_bytes)
    assert report.size_bytes < 0.4 * float_bytes


def test_float16_dynamic_and_uint8_modes_run(tmp_path):
    model = tiny_classifier()
    images = np.random.RandomState(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    expected = tf.nn.softmax(model.predict(images, verbose=0)).numpy()
    sizes = {}
    for mode, kwargs, atol in [("float32", {}, 1e-5), ("float16", {}, 1e-3),
                               ("dynamic", {}, 5e-3),
                               ("int8", {"representative_data": images, "io_dtype": "uint8"},
                                3e-2)]:
        report = export.export_tflite(model, tmp_path / f"{mode}.tflite", mode=mode, **kwargs)
        sizes[mode] = report.size_bytes
        got = tflite.run_signature(report.path, images)["probabilities"]
        print(mode, report.size_bytes, report.ops, np.abs(got - expected).max())
        np.testing.assert_allclose(got, expected, atol=atol)
        if mode == "float16":
            assert report.ops["DEQUANTIZE"] == 5  # float16 weights, dequantized at load
        if mode == "int8":
            assert report.input[2] == "uint8"
            assert report.outputs["probabilities"][1] == "uint8"
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["dynamic"] < 0.4 * sizes["float32"]


def test_calibration_images_accepts_arrays_datasets_and_generators():
    images = np.random.RandomState(0).uniform(-1, 1, (5, 32, 32, 3)).astype("float32")
    labels = np.arange(5)
    forms = [
        images,
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(2),
        tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}),
        lambda: ([images[i:i + 1]] for i in range(5)),
    ]
    for data in forms:
        got = export.calibration_images(data, (32, 32, 3), limit=4)
        assert len(got) == 4 and got[0].shape == (1, 32, 32, 3)
        np.testing.assert_array_equal(np.concatenate(got), images[:4])
    with pytest.raises(ValueError, match=r"image shape \(32, 32, 3\) != model input shape"):
        export.calibration_images(images, (64, 64, 3))
    with pytest.raises(ValueError, match="empty"):
        export.calibration_images(tf.data.Dataset.from_tensor_slices(images).take(0),
                                  (32, 32, 3))
    with pytest.raises(ValueError, match="'image' key"):
        export.calibration_images([{"pixels": images}], (32, 32, 3))


def test_bad_settings_raise_clear_errors(tmp_path):
    model = tiny_classifier()
    path = tmp_path / "x.tflite"
    with pytest.raises(ValueError, match="mode must be one of"):
        export.export_tflite(model, path, mode="int4")
    with pytest.raises(ValueError, match="needs representative_data"):
        export.export_tflite(model, path, mode="int8")
    with pytest.raises(ValueError, match="io_dtype must be one of"):
        export.export_tflite(model, path, mode="int8", representative_data=np.zeros((1, 32, 32, 3)),
                             io_dtype="int16")
    with pytest.raises(ValueError, match="io_dtype='uint8' needs a full-integer model"):
        export.export_tflite(model, path, mode="float16", io_dtype="uint8")
    with pytest.raises(ValueError, match="mode 'qat' needs a quantization-aware"):
        export.export_tflite(model, path, mode="qat")
    with pytest.raises(ValueError, match="output 'mask' does not fit a classifier"):
        export.export_tflite(model, path, output="mask")
    softmax = keras.Model(model.inputs, keras.layers.Softmax()(model.outputs[0]))
    with pytest.raises(ValueError, match="ends in a softmax: it has no logits"):
        export.export_tflite(softmax, path, output="logits")
    with pytest.raises(TypeError):
        export.export_tflite("model.keras", path)
    with pytest.raises(ValueError, match="NMS iou_threshold must be in"):
        export.NMS(iou_threshold=1.5)
    assert not os.path.exists(path)


def test_conversion_failure_names_the_op(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: tf.math.erfinv(0.1 * t),
                                                    name="odd")(inputs))
    with pytest.raises(export.ExportError, match=r"ops at fault: Erfinv") as err:
        export.export_tflite(model, tmp_path / "erf.tflite", output="raw")
    assert "mode='float32'" in str(err.value) and "odd" in str(err.value)
    assert not os.listdir(tmp_path)


def test_check_runs_rejects_a_broken_file(tmp_path):
    path = tmp_path / "broken.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    with pytest.raises(export.ExportError, match="broken.tflite does not run"):
        export.check_runs(str(path), np.zeros((1, 8, 8, 3), "float32"))


@pytest.mark.slow
def test_ssdlite_detection_postprocess_matches_keras(tmp_path):
    model = spread_ssdlite()
    nms = export.NMS(max_detections=20, score_threshold=0.3, iou_threshold=0.6)
    with pytest.raises(ValueError, match=r"expected \(204, 4\)"):
        export.serving_function(model, anchors=np.zeros((10, 4)), nms=nms)
    report = export.export_tflite(model, tmp_path / "ssd.tflite", nms=nms)
    assert report.ops[export.POSTPROCESS_OP] == 1
    assert report.outputs == {"detection_boxes": ((1, 20, 4), "float32"),
                              "detection_classes": ((1, 20), "float32"),
                              "detection_scores": ((1, 20), "float32"),
                              "num_detections": ((1,), "float32")}
    image = np.random.RandomState(0).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    got = {k: v[0] for k, v in tflite.run_signature(report.path, image).items()}
    n = int(got["num_detections"])
    assert n == 20
    outputs = model(image, training=False)

    # Same decode + class-wise NMS on the Keras side. The op does not clip boxes to the image
    # before NMS, so the exact reference leaves them unclipped too.
    boxes = decode_boxes(outputs["boxes"], model.anchors)
    scores = class_scores(outputs["classes"])
    exact = tf.image.combined_non_max_suppression(
        boxes[:, :, None], scores, 100, 20, iou_threshold=0.6, score_threshold=0.3,
        clip_boxes=False)
    np.testing.assert_allclose(got["detection_scores"][:n], exact.nmsed_scores[0, :n], atol=1e-5)
    np.testing.assert_array_equal(got["detection_classes"][:n], exact.nmsed_classes[0, :n])
    np.testing.assert_allclose(got["detection_boxes"][:n], exact.nmsed_boxes[0, :n], atol=1e-4)

    # keras_mnv2.detection.postprocess.decode_detections clips first (IoU of clipped boxes), which can only
    # suppress more: each of its detections above the op's last score is among the op's.
    keras_side = {k: np.asarray(v)[0] for k, v in decode_detections(
        outputs["boxes"], outputs["classes"], model.anchors, score_threshold=0.3,
        iou_threshold=0.6, max_detections=20).items()}
    clipped = np.clip(got["detection_boxes"][:n], 0, 1)
    kept = keras_side["scores"] >= got["detection_scores"][n - 1]
    assert kept.sum() >= 10
    iou = box_iou(keras_side["boxes"][kept], clipped)
    for row, label, score in zip(iou, keras_side["classes"][kept], keras_side["scores"][kept]):
        same = ((got["detection_classes"][:n] + 1 == label) & (row > 0.99)
                & (np.abs(got["detection_scores"][:n] - score) < 1e-5))
        assert same.any()


def quadrant_images(count=8, size=64, seed=0):
    """Images made of four coloured quadrants (one of four colours each) and their label masks."""
    rng = np.random.RandomState(seed)
    colours = np.array([[-0.8, -0.8, -0.8], [0.8, 0.8, 0.8], [0.8, -0.8, -0.8], [-0.8, 0.8, 0.8]])
    half = size // 2
    images, masks = [], []
    for _ in range(count):
        labels = rng.randint(0, 4, (2, 2))
        mask = np.kron(labels, np.ones((half, half), int))
        images.append(np.clip(colours[mask] + rng.normal(0, 0.05, (size, size, 3)), -1, 1))
        masks.append(mask)
    return np.asarray(images, "float32"), np.asarray(masks)


def probe_segmenter(images, masks, classes=4, seed=0):
    """DeepLabV3 (alpha 0.35, no ASPP), ``calibrate``d on ``images``, with a ridge-regression
    1x1 logits layer fitted to ``masks`` at the feature resolution."""
    from keras_mnv2.segmentation.deeplab import DeepLabV3

    keras.utils.set_random_seed(seed)
    model = DeepLabV3(num_classes=classes, alpha=0.35, input_shape=images.shape[1:], aspp=False,
                      dropout_rate=0.0, bn_momentum=0.0)
    calibrate(model, images)
    features = keras.Model(model.inputs, model.get_layer("concat_projection_relu").output)
    f = features.predict(images, verbose=0)
    n, h, w, c = f.shape
    step = images.shape[1] // h
    targets = np.eye(classes)[masks[:, step // 2::step, step // 2::step]].reshape(-1, classes)
    f = f.reshape(-1, c)
    mean = f.mean(0)
    z = f - mean
    ridge = 10.0 * np.trace(z.T @ z) / c
    kernel = np.linalg.solve(z.T @ z + ridge * np.eye(c), z.T @ (8.0 * (targets - 1 / classes)))
    model.get_layer("logits").set_weights([kernel[None, None].astype("float32"),
                                           (-mean @ kernel).astype("float32")])
    return model


@pytest.mark.slow
def test_deeplab_int8_mask_agrees_with_keras(tmp_path):
    images, masks = quadrant_images()
    model = probe_segmenter(images, masks)
    expected = model.predict(images, verbose=0).argmax(-1)
    print("float mask accuracy on the fixture", (expected == masks).mean())
    assert (expected == masks).mean() > 0.75
    report = export.export_tflite(model, tmp_path / "seg.tflite", mode="int8",
                                  representative_data=images, io_dtype="int8", output="mask")
    assert report.outputs == {"mask": ((1, 64, 64), "int32")}
    assert report.float_ops == ()
    got = tflite.run_signature(report.path, images)["mask"]
    agreement = (got == expected).mean()
    print("int8 mask pixel agreement", agreement)
    assert agreement > 0.85  # chance: ~0.3
