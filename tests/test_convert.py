import os

import numpy as np
import pytest

import keras
import keras_mnv2
from keras_mnv2 import convert
from keras_mnv2.deploy import export, tflite

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


def test_decode_predictions_takes_1001_way_slim_outputs(offline_keras_home, monkeypatch):
    import json

    from keras_mnv2 import imagenet

    monkeypatch.setattr(imagenet, "_class_index", None)
    index = {str(i): [f"n{i:08d}", f"class {i}"] for i in range(1000)}
    (offline_keras_home / "models" / "imagenet_class_index.json").write_text(json.dumps(index))
    preds = np.zeros((1, 1001))
    preds[0, 43] = 1  # slim index 43 = Keras index 42 (column 0 is background)
    assert keras_mnv2.decode_predictions(preds, top=1) == [[("n00000042", "class 42", 1.0)]]
    monkeypatch.setattr(imagenet, "_class_index", None)


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "deeplab", "ssdlite"])
def test_float32_and_float16_files_round_trip_to_1e_4(kind, tmp_path, images):
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
    files = [("float32", export.convert(model, output="raw"))]
    if kind == "deeplab":  # float16 weights (through DEQUANTIZE ops): one model is enough
        files.append(("float16", export.convert(model, "float16", output="raw")))
    for label, content in files:
        path = tmp_path / f"{kind}_{label}.tflite"
        path.write_bytes(content)
        converted = convert.from_tflite(path)
        assert converted.official["kind"] == kind
        got = converted.predict(x, verbose=0)
        if kind == "ssdlite":  # both outputs, by name
            expected = tflite.run_signature(content, x)
            assert sorted(expected) == ["boxes", "classes"]
            pairs = [(expected[k], got[k]) for k in ("boxes", "classes")]
        else:
            pairs = [(tflite.run(content, x), got)]
        for a, b in pairs:
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
    path.write_bytes(export.convert(other, output="raw"))
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
        print(f"{photo}: official {labels[official.argmax()]!r}, ours {labels[ours.argmax()]!r} "
              f"(p={ours.max():.3f})")
        assert ours.argmax() == official.argmax()
        assert dropped.predict(_as_float(pixels), verbose=0)[0].argmax() == ours.argmax() - 1


@pytest.mark.slow
def test_official_deeplab_mask_agrees_with_the_uint8_file(real_dir):
    from PIL import Image

    path = os.path.join(real_dir, DEEPLAB_FILE)
    model = convert.from_tflite(path)
    assert model.official == {"kind": "deeplab", "source": DEEPLAB_FILE, "num_classes": 21,
                              "alpha": 1.0, "input_shape": (513, 513, 3), "output_stride": 16,
                              "aspp": False, "recognized_by": "graph, names agree"}
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


# ----------------------------------------------------------------------------------------------
# Files recognized by their graph, whatever their tensors are called


def _renamed(path, out):
    """``path`` with every tensor renamed ``t0``, ``t1``, ... (the graph and weights as they
    are; TFLite metadata is not carried over)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for graph in model.subgraphs:
        for i, tensor in enumerate(graph.tensors):
            tensor.name = f"t{i}".encode()
    flatbuffer_utils.write_model(model, str(out))
    return out


def test_a_file_whose_tensors_name_nothing_imports_by_its_graph(tmp_path, images):
    # 3 classes: box and class predictors both have 4 values per anchor, told apart by order
    source = _perturbed(keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96))
    named = tmp_path / "named.tflite"
    named.write_bytes(export.convert(source, output="raw"))
    renamed = _renamed(named, tmp_path / "renamed.tflite")
    graph = convert.TfliteGraph(renamed)
    assert not any(convert.layer_key(graph.name(i)) for i in graph.tensors)  # names say nothing
    converted = convert.from_tflite(renamed)
    assert converted.official["recognized_by"] == "graph (no layer names in the file)"
    assert convert.from_tflite(named).official["recognized_by"] == "graph, names agree"
    x = images(1)
    expected, got = source.predict(x, verbose=0), converted.predict(x, verbose=0)
    for key in ("boxes", "classes"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4)


@pytest.mark.slow
def test_official_files_renamed_inside_give_the_same_top1_and_mask(real_dir, tmp_path):
    for name in (CLASSIFIER_FILE, DEEPLAB_FILE):
        path = os.path.join(real_dir, name)
        renamed = _renamed(path, tmp_path / name)
        original, other = convert.from_tflite(path), convert.from_tflite(renamed)
        assert original.official["recognized_by"] == "graph, names agree"
        assert other.official["recognized_by"] == "graph (no layer names in the file)"
        facts = {k: v for k, v in original.official.items() if k != "recognized_by"}
        assert {k: v for k, v in other.official.items() if k != "recognized_by"} == facts
        for a, b in zip(original.weights, other.weights):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
        photos = PHOTOS if name == CLASSIFIER_FILE else ("bird_segmentation.bmp",)
        size = original.input_shape[1]
        for photo in photos:
            x = _as_float(_image(os.path.join(real_dir, photo), size))
            a, b = original.predict(x, verbose=0)[0], other.predict(x, verbose=0)[0]
            if name == CLASSIFIER_FILE:
                print(f"{photo}: top-1 {a.argmax()} (original), {b.argmax()} (renamed)")
                assert a.argmax() == b.argmax()
            else:
                assert (a.argmax(-1) == b.argmax(-1)).all()


def test_a_graph_that_is_not_mobilenet_v2_says_where_it_stops(tmp_path):
    from keras_mnv2 import structure

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.Conv2D(8, 3, name="plain")(x)
    path = tmp_path / "plain.tflite"
    path.write_bytes(export.convert(keras.Model(inputs, x), output="raw"))
    with pytest.raises(structure.NotMobileNetV2, match="block 0: the 3x3 depthwise"):
        structure.layer_names(convert.TfliteGraph(path))


# ----------------------------------------------------------------------------------------------
# TF1 checkpoints with the official variable names (TF-slim mobilenet_v2.py / conv_blocks.py,
# the Object Detection API's ssd_mobilenet_v2_feature_extractor.py and convolutional box
# predictor, DeepLab's model.py), written from a keras_mnv2 model by a table of their own.


def _official_scope(layer_name, family, extra_depths=(512, 256, 256, 128)):
    """The official variable scope of a keras_mnv2 layer, and whether it is a batch norm."""
    import re

    prefix = "FeatureExtractor/MobilenetV2/" if family == "ssdlite" else "MobilenetV2/"
    bn = re.fullmatch(r"(.+?)(?:_BN|_bn)|bn_(Conv1)", layer_name)
    base = (bn.group(1) or bn.group(2)) if bn else layer_name
    table = {"Conv1": prefix + "Conv", "Conv_1": prefix + "Conv_1",
             "expanded_conv_depthwise": prefix + "expanded_conv/depthwise",
             "expanded_conv_project": prefix + "expanded_conv/project",
             "predictions": "MobilenetV2/Logits/Conv2d_1c_1x1", "logits": "logits/semantic",
             "aspp0": "aspp0", "image_pooling": "image_pooling",
             "concat_projection": "concat_projection"}
    found = re.fullmatch(r"block_(\d+)_(expand|depthwise|project)", base)
    if found:
        scope = f"{prefix}expanded_conv_{found.group(1)}/{found.group(2)}"
    elif re.fullmatch(r"extra_\d_(reduce|depthwise|project)", base):
        k, what = int(base[6]), base[8:]
        depth = extra_depths[k - 1]
        scope = prefix + {"reduce": f"layer_19_1_Conv2d_{k + 1}_1x1_{depth // 2}",
                          "depthwise": f"layer_19_2_Conv2d_{k + 1}_3x3_s2_{depth}_depthwise",
                          "project": f"layer_19_2_Conv2d_{k + 1}_3x3_s2_{depth}"}[what]
    elif re.fullmatch(r"(box|class)_predictor_\d(_depthwise)?", base):
        which = "BoxEncodingPredictor" if base.startswith("box") else "ClassPredictor"
        scope = f"BoxPredictor_{base.split('_')[2]}/{which}" + (
            "_depthwise" if base.endswith("_depthwise") else "")
    else:
        scope = table[base]
    return scope, bn is not None


def _write_official_checkpoint(model, family, prefix, head_epsilon=1e-3):
    """Saves ``model``'s weights under the official names (and some variables a training run
    leaves: global_step, momentum slots), as a TF1 name-based checkpoint at ``prefix``."""
    import tensorflow as tf

    tensors = {"global_step": np.array(1000, np.int64)}
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        scope, is_bn = _official_scope(layer.name, family)
        if is_bn:
            gamma, beta, mean, variance = values
            if scope.split("/")[0] in ("aspp0", "image_pooling", "concat_projection"):
                variance = variance + 1e-3 - head_epsilon  # same function at DeepLab's epsilon
            for part, value in zip(("gamma", "beta", "moving_mean", "moving_variance"),
                                   (gamma, beta, mean, variance)):
                tensors[f"{scope}/BatchNorm/{part}"] = value
            continue
        kernel = values[0]
        if kernel.ndim == 2:  # the classifier is a 1x1 conv in TF-slim
            kernel = kernel.reshape(1, 1, *kernel.shape)
        kind = "depthwise_weights" if "depthwise" in layer.name else "weights"
        tensors[f"{scope}/{kind}"] = kernel
        tensors[f"{scope}/{kind}/Momentum"] = np.zeros_like(kernel)
        if len(values) == 2:
            tensors[f"{scope}/biases"] = values[1]
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return tensors


def _check_equal(source, converted, x):
    import tensorflow as tf

    for a, b in zip(tf.nest.flatten(source.predict(x, verbose=0)),
                    tf.nest.flatten(converted.predict(x, verbose=0))):
        if source.name.startswith("mobilenetv2"):  # softmax over 1001: compare log-probabilities
            a, b = np.log(a), np.log(b)
        print(source.name, "output std", a.std(), "max |diff|", np.abs(a - b).max())
        assert a.std() > 1e-3
        np.testing.assert_allclose(b, a, atol=1e-4 * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("alpha", [0.35, 1.4])
def test_slim_classifier_checkpoint(alpha, tmp_path, images):
    source = _perturbed(keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(96, 96, 3),
                                               classes=1001))
    tensors = _write_official_checkpoint(source, "classifier",
                                         tmp_path / f"mobilenet_v2_{alpha}_96.ckpt")
    assert tensors["MobilenetV2/Logits/Conv2d_1c_1x1/weights"].shape[-1] == 1001
    assert len([n for n in tensors if n.endswith("weights") and "Momentum" not in n]) == 53
    converted = convert.from_tf_checkpoint(tmp_path / f"mobilenet_v2_{alpha}_96.ckpt")
    assert converted.official["alpha"] == alpha
    assert converted.official["input_shape"] == (96, 96, 3)  # from the file name
    _check_equal(source, converted, images(2))
    # 1001 -> 1000: the background row dropped, the rest in order
    dropped = convert.from_tf_checkpoint(tmp_path / f"mobilenet_v2_{alpha}_96.ckpt",
                                         drop_background=True)
    np.testing.assert_array_equal(dropped.get_layer("predictions").get_weights()[1],
                                  source.get_layer("predictions").get_weights()[1][1:])


@pytest.mark.slow
def test_od_api_ssdlite_coco_checkpoint(tmp_path, images):
    source = _perturbed(keras_mnv2.SSDLite(num_classes=90, input_size=300))
    assert source.anchors.shape == (1917, 4)  # ssdlite_mobilenet_v2_coco's anchor count
    tensors = _write_official_checkpoint(source, "ssdlite", tmp_path / "model.ckpt")
    assert tensors["BoxPredictor_0/ClassPredictor/weights"].shape == (1, 1, 576, 3 * 91)
    assert tensors["BoxPredictor_1/BoxEncodingPredictor/weights"].shape == (1, 1, 1280, 24)
    assert tensors["FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_5_3x3_s2_128/weights"].shape \
        == (1, 1, 64, 128)
    converted = convert.from_tf_checkpoint(tmp_path / "model.ckpt")
    assert converted.official["kind"] == "ssdlite"
    assert converted.official["num_classes"] == 90 and converted.official["input_size"] == 300
    # the config's anchors: aspect ratio 0.3333 as written there, not 1/3
    expected = keras_mnv2.ssdlite_anchors(300, aspect_ratios=(1.0, 2.0, 0.5, 3.0, 0.3333))
    np.testing.assert_array_equal(converted.anchors, expected)
    assert np.abs(converted.anchors - source.anchors).max() > 0  # 0.3333 != 1/3
    _check_equal(source, converted, images(1, size=300))
    assert convert.coco_label(1) == "person" and convert.coco_label(90) == "toothbrush"
    assert convert.coco_label(12) is None and convert.coco_label(0) == "background"
    assert sum(name is not None for name in convert.COCO_LABELS.values()) == 80


@pytest.mark.parametrize("alpha,rounding", [(1.0, {}), (0.5, dict(divisible_by=1, min_depth=1))])
def test_deeplab_checkpoint_incl_dm05(alpha, rounding, tmp_path, images):
    source = _perturbed(keras_mnv2.DeepLabV3(num_classes=21, alpha=alpha, aspp=False,
                                             input_shape=(65, 65, 3), **rounding))
    _write_official_checkpoint(source, "deeplab", tmp_path / "model.ckpt", head_epsilon=1e-5)
    converted = convert.from_tf_checkpoint(tmp_path / "model.ckpt", input_size=65)
    assert converted.official["alpha"] == alpha
    assert converted.official.get("divisible_by", 8) == rounding.get("divisible_by", 8)
    assert converted.official["aspp"] is False
    _check_equal(source, converted, images(1, size=65))
    assert convert.voc_label(3) == "bird" and len(convert.VOC_LABELS) == 21


def test_checkpoint_errors(tmp_path):
    import tensorflow as tf

    with pytest.raises(ValueError, match="not a readable TF checkpoint"):
        convert.from_tf_checkpoint(tmp_path / "missing.ckpt")
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "other.ckpt"), tensor_names=["dense/kernel"],
                      shape_and_slices=[""], tensors=[tf.zeros((2, 2))])
    with pytest.raises(ValueError, match="no MobileNetV2 variable found"):
        convert.from_tf_checkpoint(tmp_path / "other.ckpt")
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "sep.ckpt"),
                      tensor_names=["aspp1_depthwise/depthwise_weights"], shape_and_slices=[""],
                      tensors=[tf.zeros((3, 3, 320, 1))])
    with pytest.raises(ValueError, match="separable ASPP"):
        convert.from_tf_checkpoint(tmp_path / "sep.ckpt")


def test_builders_take_official_paths_as_weights(tmp_path, images):
    source = _perturbed(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                               classes=1001))
    _write_official_checkpoint(source, "classifier", tmp_path / "m.ckpt")
    x = images(1)
    top = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=1001,
                                 weights=str(tmp_path / "m.ckpt"))
    np.testing.assert_allclose(top.predict(x, verbose=0), source.predict(x, verbose=0),
                               atol=1e-5)
    # a 1000-class top gets the rows without the background; a backbone without top works too
    thousand = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                      weights=str(tmp_path / "m.ckpt"))
    np.testing.assert_array_equal(thousand.get_layer("predictions").get_weights()[1],
                                  source.get_layer("predictions").get_weights()[1][1:])
    bare = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), include_top=False,
                                  weights=str(tmp_path / "m.ckpt"))
    np.testing.assert_array_equal(bare.get_layer("block_5_expand").get_weights()[0],
                                  source.get_layer("block_5_expand").get_weights()[0])
    seg = _perturbed(keras_mnv2.DeepLabV3(num_classes=3, alpha=0.35, input_shape=(65, 65, 3),
                                          aspp=False))
    path = tmp_path / "seg.tflite"
    path.write_bytes(export.convert(seg, output="raw"))
    loaded = keras_mnv2.DeepLabV3(num_classes=3, alpha=0.35, input_shape=(65, 65, 3),
                                  aspp=False, weights=str(path))
    x = images(1, size=65)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), seg.predict(x, verbose=0),
                               atol=1e-4 * max(1.0, np.abs(seg.predict(x, verbose=0)).max()))


def test_cli_convert_writes_a_keras_model(tmp_path, images, capsys):
    from pipelines.cli import main

    source = _perturbed(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=1001))
    _write_official_checkpoint(source, "classifier", tmp_path / "mobilenet_v2_0.35_96.ckpt")
    out = tmp_path / "official.keras"
    assert main(["convert", str(tmp_path / "mobilenet_v2_0.35_96.ckpt"), "-o", str(out),
                 "--drop-background"]) == 0
    printed = capsys.readouterr().out
    assert "kind=classifier" in printed and "classes=1000" in printed
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["official.keras"] + [n for n in os.listdir(tmp_path) if "ckpt" in n])  # no temp left
    loaded = keras.saving.load_model(out)
    x = images(1)
    # the same logits without the background: log-probabilities differ by one constant per row
    shift = np.log(loaded.predict(x, verbose=0)) - np.log(source.predict(x, verbose=0)[:, 1:])
    assert loaded.output.shape == (None, 1000) and shift.std(axis=1).max() < 1e-4
    assert main(["convert", str(tmp_path / "missing.tflite"), "-o", str(out)]) == 2
    assert "TFLite file not found" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "mobilenet_v2_0.35_96.ckpt"), "-o",
                 str(tmp_path / "x.h5")]) == 2
    assert "--output must end in .keras" in capsys.readouterr().err


def test_init_from_loads_matching_layers_and_reinitializes_the_class_predictors(tmp_path):
    source = _perturbed(keras_mnv2.SSDLite(num_classes=5, alpha=0.35, input_size=96))
    path = tmp_path / "source.keras"
    source.save(path)
    target = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96)
    fresh = target.get_layer("class_predictor_2").get_weights()[0].copy()
    lines = []
    loaded, left = convert.init_from(target, str(path), freeze_batch_norm=True, log=lines.append)
    print(lines[0])
    assert sorted(left) == [f"class_predictor_{i}" for i in range(6)]
    assert "re-initialized 6 class predictor(s)" in lines[0]
    assert len(loaded) == sum(1 for layer in target.layers if layer.weights) - 6
    np.testing.assert_array_equal(target.get_layer("block_7_expand").get_weights()[0],
                                  source.get_layer("block_7_expand").get_weights()[0])
    np.testing.assert_array_equal(target.get_layer("class_predictor_2").get_weights()[0], fresh)
    assert not target.get_layer("block_7_expand_BN").trainable
    with pytest.raises(ValueError, match="no layer of"):
        convert.init_from(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="zz")]),
                          source, log=None)


def test_train_flags_for_fine_tuning():
    from pipelines import cli
    from pipelines.jobs import detection

    args = cli.build_parser().parse_args(["train", "coco", "--init", "ssdlite_coco.keras",
                                          "--finetune", "--freeze-bn", "--input-size", "300"])
    assert args.init == "ssdlite_coco.keras" and args.freeze_bn and args.finetune
    recipe = cli._recipe(args, detection, embedded=False)
    assert recipe.learning_rate == pytest.approx(detection.PAPER.learning_rate / 10)
    assert recipe.epochs == detection.PAPER.epochs // 10 and recipe.warmup_epochs == 0.0
    assert recipe.input_size == 300  # flags still override the fine-tuning variant
    plain = cli._recipe(cli.build_parser().parse_args(["train", "coco"]), detection, False)
    assert plain == detection.PAPER
