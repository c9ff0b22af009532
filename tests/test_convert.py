import os

import numpy as np
import pytest

import keras
import keras_mnv2
from keras_mnv2 import convert
from keras_mnv2.deploy import tflite

CLASSIFIER_FILE = "mobilenet_v2_1.0_224_quant.tflite"
DEEPLAB_FILE = "deeplabv3_mnv2_pascal_quant.tflite"
PHOTOS = ("cat.bmp", "grace_hopper.bmp", "parrot.jpg", "hot_dog.jpg", "bird_segmentation.bmp")


def _perturbed(model, seed=0):
    """Non-trivial batch-norm statistics, so folded biases and scales matter."""
    rng = np.random.RandomState(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            n = gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.2, 0.2, n),
                               rng.uniform(-0.1, 0.1, n), rng.uniform(0.5, 1.5, n)])
    return model


def _image(path, size=None):
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _run_official(path, pixels):
    """The official uint8 file on uint8 pixels [H, W, 3]; returns its first output."""
    interp = tflite.interpreter(open(path, "rb").read(), delegates=False)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], pixels[None])
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])[0]


def _as_float(pixels):
    """The official files' input quantization (scale 1/128, zero point 128) as float input."""
    return (pixels[None].astype(np.float32) - 128.0) / 128.0


def test_layer_key_maps_the_official_scope_names():
    cases = {
        "MobilenetV2/Conv/Conv2D_Fold;MobilenetV2/Conv/weights_quant/FakeQuant": "Conv1",
        "MobilenetV2/expanded_conv/depthwise/depthwise_Fold": "expanded_conv_depthwise",
        "MobilenetV2/expanded_conv_13/expand/Conv2D_Fold": "block_13_expand",
        "FeatureExtractor/MobilenetV2/expanded_conv_16/project/Conv2D": "block_16_project",
        "MobilenetV2/Conv_1/Conv2D_Fold": "Conv_1",
        "MobilenetV2/Logits/Conv2d_1c_1x1/Conv2D": "predictions",
        "FeatureExtractor/MobilenetV2/layer_19_1_Conv2d_2_1x1_256/Conv2D": "extra_1_reduce",
        "FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_5_3x3_s2_128_depthwise/depthwise":
            "extra_4_depthwise",
        "FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_3_3x3_s2_256/Conv2D": "extra_2_project",
        "BoxPredictor_0/BoxEncodingPredictor_depthwise/depthwise": "box_predictor_0_depthwise",
        "BoxPredictor_5/ClassPredictor/Conv2D": "class_predictor_5",
        "aspp0/Conv2D_Fold": "aspp0",
        "image_pooling/Conv2D_Fold": "image_pooling",
        "concat_projection/Conv2D_Fold": "concat_projection",
        "logits/semantic/Conv2D": "logits",
        "mobilenetv2_0.35_96_1/block_1_expand_1/convolution": "block_1_expand",
        "m_1/block_4_depthwise_relu_1/Relu6;m_1/block_4_depthwise_1/depthwise": "block_4_depthwise",
        "m_1/box_predictor_0_depthwise_relu_1/Relu6": "box_predictor_0_depthwise",
        "m_1/class_predictor_3_1/convolution": "class_predictor_3",
        "m_1/predictions_1/MatMul": "predictions",
        "arith.constant12": None,
    }
    for name, key in cases.items():
        assert convert.layer_key(name) == key, name


def test_infer_width_recognizes_alpha_and_the_deeplab_rounding():
    for alpha, rounding in [(0.35, {}), (1.4, {}), (0.5, dict(divisible_by=1, min_depth=1))]:
        model = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3), include_top=False,
                                       **rounding)
        widths = {layer.name: int(layer.filters) for layer in model.layers
                  if hasattr(layer, "filters")}
        found = convert.infer_width(widths)
        assert found == (alpha, rounding.get("divisible_by", 8), rounding.get("min_depth"))
    with pytest.raises(ValueError, match="fit no width multiplier"):
        convert.infer_width({**widths, "Conv1": 7})


@pytest.mark.parametrize("kind", ["classifier", "deeplab", "ssdlite"])
def test_float32_and_float16_files_round_trip_to_1e_4(kind, tmp_path, images):
    import tensorflow as tf

    if kind == "classifier":
        model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=7)
        x = images(2)
    elif kind == "deeplab":
        model = keras_mnv2.DeepLabV3(num_classes=4, alpha=0.5, input_shape=(65, 65, 3),
                                     divisible_by=1, min_depth=1)
        x = images(2, size=65)
    else:
        model = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96)
        x = images(2)
    _perturbed(model)
    float32 = tflite.convert_float(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    float16 = converter.convert()
    for label, content in (("float32", float32), ("float16", float16)):
        path = tmp_path / f"{kind}_{label}.tflite"
        path.write_bytes(content)
        converted = convert.from_tflite(path)
        assert converted.official["kind"] == kind
        expected = tflite.run(content, x)
        got = converted.predict(x, verbose=0)
        for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
            a, b = np.asarray(a), np.asarray(b)
            print(kind, label, "output std", a.std(), "max |keras - tflite|", np.abs(a - b).max())
            assert a.std() > 1e-3
            np.testing.assert_allclose(b, a, atol=1e-4 * max(1.0, np.abs(a).max()))
    if kind == "deeplab":
        assert converted.official["divisible_by"] == 1
        assert converted.get_layer("block_2_expand").filters == 72
    if kind == "ssdlite":
        np.testing.assert_array_equal(converted.anchors, model.anchors)


def test_unknown_and_missing_files_raise_clear_errors(tmp_path):
    inputs = keras.Input((8, 8, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="stem")(inputs))
    path = tmp_path / "other.tflite"
    path.write_bytes(tflite.convert_float(other))
    with pytest.raises(ValueError, match="name no MobileNetV2 layer"):
        convert.from_tflite(path)
    with pytest.raises(FileNotFoundError, match="TFLite file not found"):
        convert.from_tflite(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError, match="not a readable TFLite model"):
        convert.from_tflite(bad)


@pytest.mark.slow
def test_official_classifier_top1_equals_the_uint8_file_on_every_real_photo(real_dir):
    path = os.path.join(real_dir, CLASSIFIER_FILE)
    model = convert.from_tflite(path)
    assert model.official["classes"] == 1001 and model.official["alpha"] == 1.0
    dropped = convert.from_tflite(path, drop_background=True)
    labels = open(os.path.join(real_dir, "imagenet_labels.txt")).read().splitlines()
    for photo in PHOTOS:
        pixels = _image(os.path.join(real_dir, photo), 224)
        official = _run_official(path, pixels)
        ours = model.predict(_as_float(pixels), verbose=0)[0]
        (_, name, score), = keras_mnv2.decode_predictions(ours[None], top=1)[0:1][0][:1]
        print(f"{photo}: official {labels[official.argmax()]!r}, ours {labels[ours.argmax()]!r} "
              f"({name}, p={score:.3f})")
        assert ours.argmax() == official.argmax()
        assert dropped.predict(_as_float(pixels), verbose=0)[0].argmax() == ours.argmax() - 1


@pytest.mark.slow
def test_official_deeplab_mask_agrees_with_the_uint8_file(real_dir):
    from PIL import Image

    path = os.path.join(real_dir, DEEPLAB_FILE)
    model = convert.from_tflite(path)
    assert model.official == {"kind": "deeplab", "source": DEEPLAB_FILE, "num_classes": 21,
                              "alpha": 1.0, "input_shape": (513, 513, 3), "output_stride": 16,
                              "aspp": False}
    assert model.get_layer("logits_upsample").align_corners
    pixels = _image(os.path.join(real_dir, "bird_segmentation.bmp"))
    official = _run_official(path, pixels)
    ours = model.predict(_as_float(pixels), verbose=0)[0].argmax(-1)
    agreement = float((ours == official).mean())
    mask = np.asarray(Image.open(os.path.join(real_dir, "bird_segmentation_mask.bmp")))
    mask = np.where((mask == 1) | (mask == 2), 255, mask)  # the outline: ignore
    iou_ours, _ = keras_mnv2.iou_from_confusion(keras_mnv2.confusion_matrix(mask, ours, 21))
    iou_official, _ = keras_mnv2.iou_from_confusion(
        keras_mnv2.confusion_matrix(mask, official.astype(np.int64), 21))
    print(f"DeepLab pixel agreement with the official uint8 file: {agreement:.4f}; "
          f"mIoU against the mask: ours {iou_ours:.4f}, official {iou_official:.4f}")
    assert agreement >= 0.98
    assert iou_ours > 0.8
