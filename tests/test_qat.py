import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_mnv2
from keras_mnv2.deploy import export, qat, tflite
from keras_mnv2.segmentation.deeplab import DeepLabV3
from keras_mnv2.detection.postprocess import decode_detections

# The fixtures shared with the export tests (tests/ is on sys.path under pytest).
from test_export import box_iou, pattern_images, probe_classifier, spread_ssdlite


def perturbed(model, seed=4):
    """Non-trivial batch-norm statistics (the 1-D weights), so outputs are not near zero."""
    rng = np.random.RandomState(seed)
    model.set_weights([w + rng.uniform(0, 0.1, w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    return model


def test_builder_config_reads_the_builder_arguments():
    cases = [
        (keras_mnv2.MobileNetV2,
         dict(alpha=0.35, input_shape=(96, 96, 3), classes=7, classifier_activation=None,
              dropout_rate=0.0, bn_momentum=0.9)),
        (keras_mnv2.MobileNetV2,
         dict(alpha=1.3, input_shape=(64, 64, 3), include_top=False, pooling="max",
              output_stride=8, name="custom")),
        (keras_mnv2.MobileNetV2,
         dict(alpha=0.5, input_shape=(64, 64, 3), classes=3, expansion_splits=2)),
        (keras_mnv2.SSDLite, dict(num_classes=3, alpha=0.35, input_size=96, bn_momentum=0.9)),
        (DeepLabV3, dict(num_classes=4, alpha=0.35, input_shape=(97, 97, 3), output_stride=8,
                         aspp=False, dropout_rate=0.0)),
    ]
    for builder, kwargs in cases:
        model = builder(**kwargs)
        found_builder, found = qat.builder_config(model)
        assert found_builder is builder
        for key, value in kwargs.items():
            assert found[key] == value, (builder.__name__, key)
        assert found["name"] == model.name
    # a default that was not passed is read back too
    assert qat.builder_config(keras_mnv2.MobileNetV2(alpha=0.5, input_shape=(64, 64, 3),
                                                     classes=3))[1]["dropout_rate"] == 0.0


@pytest.mark.parametrize("kind", ["classifier", "ssdlite", "deeplab"])
def test_twin_outputs_equal_the_keras_model(kind, images):
    if kind == "classifier":
        model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=10,
                                       classifier_activation=None)
        x = images(2)
    elif kind == "ssdlite":
        model = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96, bn_momentum=0.9)
        x = images(2)
    else:  # 97 px at output stride 8: dilated backbone, Resizing upsampling
        model = DeepLabV3(num_classes=5, alpha=0.35, input_shape=(97, 97, 3), output_stride=8)
        x = images(2, size=97)
    perturbed(model)
    twin = qat.tf_keras_twin(model)
    assert isinstance(twin, tf_keras.Model)
    def names(m):
        return {layer.name for layer in m.layers if type(layer).__name__ != "InputLayer"}

    assert names(twin) == names(model)
    expected = tf.nest.flatten(model(x, training=False))
    got = tf.nest.flatten(twin(x, training=False))
    for a, b in zip(expected, got):
        a, b = np.asarray(a), np.asarray(b)
        print(kind, "output std", a.std(), "max |twin - keras|", np.abs(a - b).max())
        assert a.std() > 1e-3  # not a constant
        np.testing.assert_allclose(b, a, atol=1e-5 * max(1.0, np.abs(a).max()))
    if kind == "ssdlite":
        np.testing.assert_array_equal(twin.anchors, model.anchors)


def test_twin_from_a_keras_file(tmp_path, images):
    model = perturbed(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=4,
                                             bn_momentum=0.9))
    path = str(tmp_path / "last.keras")
    model.save(path)
    twin = qat.tf_keras_twin(path)
    x = images(2, size=64)
    np.testing.assert_allclose(twin(x, training=False), model(x, training=False), atol=1e-6)
    assert float(twin.get_layer("bn_Conv1").momentum) == pytest.approx(0.9)


def test_twin_errors_are_clear(tmp_path):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), classes=4,
                                   classifier_activation=None)
    with pytest.raises(ValueError, match="weight shapes differ"):
        qat.tf_keras_twin(model, builder=keras_mnv2.MobileNetV2, alpha=0.35,
                          input_shape=(32, 32, 3), classes=5)
    # a wrong argument that keeps every weight shape is caught by the output check
    perturbed(model)
    with pytest.raises(ValueError, match="differs by up to"):
        qat.tf_keras_twin(model, classifier_activation="softmax")
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="other")
    with pytest.raises(ValueError, match="cannot tell which keras_mnv2 builder made model 'other'"):
        qat.tf_keras_twin(other)
    with pytest.raises(TypeError, match="already a tf_keras model"):
        qat.tf_keras_twin(qat.tf_keras_twin(model, classifier_activation=None))
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        qat.tf_keras_twin(str(tmp_path / "missing.keras"))


def _odd_model():
    layers = tf_keras.layers
    inputs = layers.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.ReLU(6.0, name="relu")(x)
    y = layers.Conv2D(8, 1, name="side")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.BatchNormalization(name="add_bn")(x)  # not after a convolution: not foldable
    x = layers.Resizing(24, 24, name="resize")(x)
    x = layers.Lambda(lambda t: t * tf.sigmoid(t), name="swish")(x)
    x = layers.Conv2D(4, 1, name="head")(x)
    x = layers.Reshape((-1, 4), name="flat")(x)
    return tf_keras.Model(inputs, x, name="odd")


def test_quantization_plan_annotates_or_lists_every_layer():
    model = _odd_model()
    plan = qat.quantization_plan(model, keep_float=["head"])
    assert plan == {
        "conv": "int8 weights + output",
        "conv_bn": "folded into Conv2D",
        "relu": "int8 output",
        "side": "int8 weights + output",
        "add": "int8 output",
        "add_bn": "int8 output (annotated)",
        "resize": "int8 output (annotated)",
        "swish": "float (Lambda has no 8-bit QuantizeConfig)",
        "head": "float (keep_float)",
        "flat": "int8 passthrough",
    }
    assert qat.float_layers(plan) == ["swish", "head"]
    with pytest.raises(ValueError, match=r"keep_float names layers not in 'odd': \['nope'\]"):
        qat.quantization_plan(model, keep_float=["nope"])
    with pytest.raises(ValueError, match="model 'odd' is not quantization-aware"):
        qat.qat_fit(model, np.zeros((1, 16, 16, 3)), epochs=1, loss="mse")

    lines = []
    qat_model = qat.quantize(model, keep_float=["head"], log=lines.append)
    assert lines == ["quantize odd: 8 layers quantized, 2 left float: swish, head"]
    assert qat.is_quantized(qat_model) and not qat.is_quantized(model)
    # TFMOT starts the input range empty: untrained and uncalibrated, it cannot be exported
    uncalibrated = qat.uncalibrated_inputs(qat_model)  # tf_keras numbers repeated layer names
    assert len(uncalibrated) == 1 and uncalibrated[0].startswith("quantize_layer")
    with pytest.raises(ValueError, match=f"input range of {uncalibrated[0]} is empty"):
        export.convert(qat_model, mode="qat", output="raw")
    wrappers = {layer.layer.name: layer for layer in qat_model.layers if hasattr(layer, "layer")}
    assert type(wrappers["resize"].quantize_config).__name__ == "Default8BitOutputQuantizeConfig"
    assert type(wrappers["swish"].quantize_config).__name__ == "NoOpQuantizeConfig"
    assert type(wrappers["head"].quantize_config).__name__ == "NoOpQuantizeConfig"
    x = np.random.RandomState(0).uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    assert qat.calibrate_ranges(qat_model, model, x) == 5  # relu, side, add, add_bn, resize
    assert qat.uncalibrated_inputs(qat_model) == []
    relu_max = next(v for v in qat_model.variables if v.name.startswith("quant_relu/output_max"))
    hidden = tf_keras.Model(model.inputs, model.get_layer("relu").output)
    assert float(relu_max.numpy()) == pytest.approx(float(hidden(x).numpy().max()))
    expected, got = model(x).numpy(), qat_model(x).numpy()
    correlation = np.corrcoef(expected.ravel(), got.ravel())[0, 1]
    print("fake-quantized vs float correlation", correlation)
    assert correlation > 0.999  # same weights, fake-quantized with calibrated ranges


def test_a_softmax_head_exports_one_softmax():
    # TFMOT swaps the Dense's softmax for a QuantizeAwareActivation: the export must still see it
    # and not append a second one
    layers = tf_keras.layers
    inputs = layers.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    model = tf_keras.Model(inputs, layers.Dense(3, activation="softmax", name="head")(x))
    x = np.random.RandomState(0).uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    qat_model = qat.quantize(model, calibration_data=x, log=None)
    assert export._ends_in_softmax(qat_model)
    ops = tflite.op_counts(export.convert(qat_model, mode="qat"))
    assert ops["SOFTMAX"] == 1 and ops["FULLY_CONNECTED"] == 1


def test_the_heads_of_ssdlite_and_deeplab_are_quantized():
    ssd = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96, framework="tf_keras")
    plan = qat.quantization_plan(ssd)
    assert qat.float_layers(plan) == []
    assert plan["box_predictor_0_depthwise_BN"] == "folded into DepthwiseConv2D"
    assert plan["class_predictor_5"] == "int8 weights + output"
    assert plan["box_predictor_3_reshape"] == "int8 passthrough"
    assert plan["boxes"] == plan["classes"] == "int8 output"
    assert plan["extra_4_project_relu"] == "int8 output"
    counts = {how: list(plan.values()).count(how) for how in set(plan.values())}
    assert counts == {"int8 weights + output": 88, "int8 output": 71, "folded into Conv2D": 43,
                      "folded into DepthwiseConv2D": 33, "int8 passthrough": 16}
    for size, output_stride, upsampling, align_corners in [
            (97, 8, "int8 output (annotated)", False), (96, 16, "int8 output", False),
            (96, 16, "int8 output (annotated)", True)]:
        seg = DeepLabV3(num_classes=5, alpha=0.35, input_shape=(size, size, 3),
                        output_stride=output_stride, framework="tf_keras",
                        align_corners=align_corners)
        plan = qat.quantization_plan(seg)
        assert qat.float_layers(plan) == []
        # half-pixel: Resizing at 97 px, UpSampling2D at 96; align_corners: BilinearResize
        assert plan["logits_upsample"] == upsampling
        assert plan["image_pooling_upsample"] == "int8 output"
        assert plan["concat"] == "int8 output"
        assert plan["logits"] == "int8 weights + output"


@pytest.mark.slow
def test_qat_classifier_fits_and_converts_to_int8(tmp_path):
    images, labels = pattern_images()
    model = probe_classifier(images, labels)
    expected_float = model.predict(images, verbose=0)
    lines = []
    # bn_momentum overrides the probe's 0 (which would swap in one batch's statistics)
    qat_model = qat.quantize(qat.tf_keras_twin(model, bn_momentum=0.99), calibration_data=images,
                             log=lines.append)
    assert lines[0].endswith("155 layers quantized, none left float")
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(16, seed=0).batch(8)
    run_dir = tmp_path / "qat"
    history = qat.qat_fit(qat_model, data.repeat(), epochs=1, steps_per_epoch=2,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          learning_rate=1e-5, run_dir=str(run_dir), verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert {"history.csv", "last.weights.h5", "backup"} <= set(os.listdir(run_dir))

    report = export.export_tflite(qat_model, tmp_path / "qat.tflite", mode="qat",
                                  io_dtype="int8", output="logits")
    assert report.float_ops == ()
    assert report.input[2] == "int8" and report.outputs == {"logits": ((1, 4), "int8")}
    assert report.ops["CONV_2D"] == 35 and report.ops["FULLY_CONNECTED"] == 1
    got = tflite.run_signature(report.path, images)["logits"]
    expected_qat = qat_model.predict(images, verbose=0)
    agreement_qat = (got.argmax(-1) == expected_qat.argmax(-1)).mean()
    agreement_float = (got.argmax(-1) == expected_float.argmax(-1)).mean()
    correlation = np.corrcoef(got.ravel(), expected_qat.ravel())[0, 1]
    print(f"QAT TFLite vs Keras QAT: top-1 {agreement_qat:.3f}, correlation {correlation:.4f}; "
          f"vs float Keras: top-1 {agreement_float:.3f}; {report.size_bytes} bytes")
    assert agreement_qat >= 15 / 16 and correlation > 0.99
    assert agreement_float >= 0.9

    fresh = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=4,
                                   classifier_activation=None, dropout_rate=0.0)
    assert qat.float_from_qat(qat_model, fresh) == 105
    tuned = next(v for v in qat_model.variables if v.name == "block_5_project/kernel:0")
    np.testing.assert_array_equal(fresh.get_layer("block_5_project").get_weights()[0], tuned)
    assert not np.array_equal(tuned, model.get_layer("block_5_project").get_weights()[0])


@pytest.mark.slow
def test_qat_ssdlite_exports_with_the_postprocess_op(tmp_path):
    model = spread_ssdlite()
    images = np.random.RandomState(1).uniform(-1, 1, (8, 96, 96, 3)).astype("float32")
    qat_model = qat.quantize(model, calibration_data=images, log=None)
    np.testing.assert_array_equal(qat_model.anchors, model.anchors)
    nms = export.NMS(max_detections=20, score_threshold=0.3)
    report = export.export_tflite(qat_model, tmp_path / "ssd_qat.tflite", mode="qat",
                                  io_dtype="uint8", nms=nms)
    assert report.ops[export.POSTPROCESS_OP] == 1
    assert report.float_ops == (export.POSTPROCESS_OP,)  # everything before it is int8
    assert report.input == ("image", (1, 96, 96, 3), "uint8")
    image = np.random.RandomState(0).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    got = {k: v[0] for k, v in tflite.run_signature(report.path, image).items()}
    outputs = qat_model(image, training=False)
    keras_side = {k: np.asarray(v)[0] for k, v in decode_detections(
        outputs["boxes"], outputs["classes"], model.anchors, score_threshold=0.3,
        max_detections=20).items()}
    assert int(got["num_detections"]) >= 5
    iou = box_iou(np.clip(got["detection_boxes"][:5], 0, 1), keras_side["boxes"])
    for i in range(5):  # the five best int8 detections are among the Keras QAT model's
        same = ((keras_side["classes"] == got["detection_classes"][i] + 1) & (iou[i] > 0.9)
                & (np.abs(keras_side["scores"] - got["detection_scores"][i]) < 0.03))
        assert same.any(), i
