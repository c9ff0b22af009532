import keras
import numpy as np
import pytest

import keras_mnv2
from keras_mnv2.blocks import split_sizes
from keras_mnv2.split import split_blocks, split_expansion

SIZE = 96


def _trained_like(model, seed=0):
    """Gives ``model`` (built with bn_momentum=0) batch-norm statistics of real activations, so
    that its outputs depend on the input; a small variance floor keeps the random network from
    amplifying float rounding (as trained networks do not)."""
    x = np.random.RandomState(seed).uniform(-1, 1, (8, SIZE, SIZE, 3)).astype("float32")
    model([x] if isinstance(getattr(model, "_inputs_struct", None), list) else x, training=True)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, mean, variance + 0.01])
    return model


@pytest.fixture(scope="module")
def tiny():
    return _trained_like(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3),
                                                include_top=False, bn_momentum=0.0))


def _probe(model):
    """The model's output and a mid-network map, which must vary from image to image."""
    return keras.Model(model.inputs, [model.get_layer("block_5_add").output, model.outputs[0]])


def test_split_sizes_are_as_equal_as_possible():
    assert split_sizes(96, 6) == (16,) * 6
    assert split_sizes(48, 5) == (10, 10, 10, 9, 9)
    assert split_sizes(8, 20) == (1,) * 8  # capped at the width
    with pytest.raises(ValueError, match="splits must be an integer >= 1"):
        split_sizes(8, 0)


def test_builder_split_block_structure():
    # alpha 0.35: block 1 expands 8 channels to 48, split into 5 groups of 10, 10, 10, 9, 9.
    whole = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3))
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), expansion_splits=5)
    widths = [model.get_layer(f"block_1_expand_s{i}").filters for i in range(5)]
    assert widths == [10, 10, 10, 9, 9]
    assert [model.get_layer(f"block_1_project_s{i}").filters for i in range(5)] == [8] * 5
    assert model.get_layer("block_1_project_sum_s4").output.shape[-1] == 8
    assert model.get_layer("block_1_project_BN").input.shape[-1] == 8
    for missing in ("block_1_expand", "block_1_depthwise", "block_1_project", "Conv1"):
        with pytest.raises(ValueError):
            model.get_layer(missing)
    # Block 0 has no expansion: it splits together with Conv1 (32 * 0.35 -> 16 channels).
    assert [model.get_layer(f"Conv1_s{i}").filters for i in range(5)] == [4, 3, 3, 3, 3]
    assert split_blocks(model) == {"expanded_conv_": 5, **{f"block_{i}_": 5 for i in range(1, 17)}}
    # Slicing adds no parameter and loses none (no bias anywhere in the branch).
    assert model.count_params() == whole.count_params() == 1_691_208
    assert split_blocks(whole) == {}


def test_per_block_splits_and_invalid_values():
    plan = (3, 6, 3) + (1,) * 14
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), include_top=False,
                                   expansion_splits=plan)
    assert split_blocks(model) == {"expanded_conv_": 3, "block_1_": 6, "block_2_": 3}
    model.get_layer("block_3_expand")  # whole
    for bad in (0, True, 2.0, (2, 2), (1,) * 16 + (0,)):
        with pytest.raises(ValueError, match="expansion_splits must be an integer >= 1 or a "
                                             "sequence of 17"):
            keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), expansion_splits=bad)


@pytest.mark.parametrize("splits", [2, 5, (3, 6, 3) + (1,) * 14])
def test_split_expansion_keeps_outputs(tiny, images, splits):
    # 5 divides none of the widths split (16 for Conv1, then 48, 96, 144, 192, 336); 2 all.
    split = split_expansion(tiny, splits)
    x = images(n=4, size=SIZE, seed=3)
    mid, out = _probe(tiny).predict(x, verbose=0)
    split_mid, split_out = _probe(split).predict(x, verbose=0)
    assert mid.std(axis=0).mean() > 0.05  # the probe sees the input
    np.testing.assert_allclose(split_mid, mid, atol=1e-5)
    np.testing.assert_allclose(split_out, out, atol=1e-5)
    assert split.count_params() == tiny.count_params()
    assert split_blocks(split)["block_1_"] == {2: 2, 5: 5}.get(splits, 6)


def test_a_wrong_slice_would_show(tiny, images):
    split = split_expansion(tiny, 3)
    layer = split.get_layer("block_4_expand_s1")
    kernel = layer.get_weights()[0]
    layer.set_weights([kernel[..., ::-1]])  # the group's channels in the wrong order
    x = images(n=2, size=SIZE)
    assert np.abs(split.predict(x, verbose=0) - tiny.predict(x, verbose=0)).max() > 1e-3


def test_split_expansion_builds_the_builders_graph(tiny, images):
    split = split_expansion(tiny, 5)
    built = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), include_top=False,
                                   expansion_splits=5)
    names = sorted(layer.name for layer in split.layers[1:])
    assert names == sorted(layer.name for layer in built.layers[1:])
    assert keras_mnv2.copy_weights(split, built) > 0
    x = images(n=2, size=SIZE)
    np.testing.assert_allclose(built.predict(x, verbose=0), tiny.predict(x, verbose=0), atol=1e-5)


def test_split_model_keras_file_round_trip(tiny, images, tmp_path):
    split = split_expansion(tiny, 3)
    path = tmp_path / "split.keras"
    split.save(path)
    loaded = keras.saving.load_model(path)
    assert split_blocks(loaded) == split_blocks(split)
    x = images(n=2, size=SIZE)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), tiny.predict(x, verbose=0),
                               atol=1e-5)


def test_ssdlite_keeps_the_tapped_block_whole(images):
    # block_13_expand_relu is SSDLite's stride-16 feature map: its block cannot be split.
    model = _trained_like(keras_mnv2.SSDLite(3, alpha=0.35, input_size=SIZE, bn_momentum=0.0))
    split = split_expansion(model, 3)
    built = keras_mnv2.SSDLite(3, alpha=0.35, input_size=SIZE, expansion_splits=3)
    for candidate in (split, built):
        assert "block_13_" not in split_blocks(candidate)
        assert len(split_blocks(candidate)) == 16
        candidate.get_layer("block_13_expand_relu")
    assert sorted(l.name for l in split.layers[1:]) == sorted(l.name for l in built.layers[1:])
    np.testing.assert_array_equal(split.anchors, model.anchors)
    x = images(n=2, size=SIZE)
    expected, got = model.predict(x, verbose=0), split.predict(x, verbose=0)
    for key in ("boxes", "classes"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


def test_tf_keras_model_splits(images):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), include_top=False,
                                   framework="tf_keras", bn_momentum=0.0)
    model = _trained_like(model)
    split = split_expansion(model, 4)
    assert type(split).__module__.startswith("tf_keras")
    assert split_blocks(split)["block_16_"] == 4
    x = images(n=2, size=SIZE)
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_split_expansion_errors(tiny):
    with pytest.raises(ValueError, match="already split"):
        split_expansion(split_expansion(tiny, 2), 2)
    with pytest.raises(ValueError, match="splits must be an integer >= 1"):
        split_expansion(tiny, 0)
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)])
    with pytest.raises(ValueError, match="no inverted residual"):
        split_expansion(keras.Model(plain.inputs, plain.outputs), 2)
    with pytest.raises(TypeError):
        split_expansion("model.keras", 2)


def _named_block(splits, name="zz_block", size=32, channels=16):
    """One stride-1 inverted residual (expansion 6) with random weights. Named to sort after the
    input ``image``: the converter then emits the groups level by level, side by side."""
    from keras_mnv2.blocks import inverted_residual

    x = keras.Input((size, size, channels))
    y = inverted_residual(keras, x, 6, channels, 1, block_id=1, splits=splits)
    model = keras.Model(x, y, name=name)
    rng = np.random.RandomState(0)
    model.set_weights([rng.uniform(0.5, 1.0, w.shape) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_export_keeps_the_split_arena(mode, tmp_path, monkeypatch):
    from keras_mnv2.deploy import export, memory, tflite

    rng = np.random.RandomState(1)
    data = rng.uniform(-1, 1, (4, 32, 32, 16)).astype("float32")
    kwargs = dict(mode=mode, output="raw", representative_data=data if mode == "int8" else None,
                  io_dtype="int8" if mode == "int8" else "float32")
    split, whole = _named_block(3), _named_block(1)
    assert export.has_split_blocks(split) and not export.has_split_blocks(whole)
    report = export.export_tflite(split, tmp_path / "split.tflite", **kwargs)
    export.export_tflite(whole, tmp_path / "whole.tflite", **kwargs)
    with monkeypatch.context() as patch:  # the converter's own op order
        patch.setattr(memory, "reorder_ops", lambda content: content)
        export.export_tflite(split, tmp_path / "converter_order.tflite", **kwargs)
    arena = {name: memory.tflite_arena_bytes(str(tmp_path / f"{name}.tflite"))
             for name in ("split", "whole", "converter_order")}
    # 32x32 px, 16 channels expanded to 96 in 3 groups of 32 (bytes per channel: 4096 float,
    # 1024 int8, with int8 input and output). Whole: input 16 + expansion 96 + depthwise 96 = 208 channels; memory order:
    # input 16 + running sum 16 + one group's expansion and depthwise 32 + 32 = 96; the
    # converter's order here holds all groups' depthwise outputs before projecting: 144.
    per_channel = 32 * 32 * (4 if mode == "float32" else 1)
    assert arena["whole"] == 208 * per_channel
    assert arena["split"] == 96 * per_channel
    assert arena["converter_order"] == 144 * per_channel
    x = rng.uniform(-1, 1, (1, 32, 32, 16)).astype("float32")
    got = tflite.run_signature(report.path, x)["output"]
    np.testing.assert_array_equal(
        got, tflite.run_signature(str(tmp_path / "converter_order.tflite"), x)["output"])
    expected = split.predict(x, verbose=0)
    if mode == "float32":
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    else:  # within a few int8 steps of the output (each partial projection is requantized)
        step = tflite.interpreter(report.path).get_output_details()[0]["quantization"][0]
        assert np.abs(got - expected).mean() < step
        assert np.abs(got - expected).max() < 3 * step


def test_fold_projection_bn_keeps_outputs(tiny, images):
    from keras_mnv2.split import fold_projection_bn, foldable_blocks

    split = split_expansion(tiny, (3, 6, 3) + (1,) * 14)
    folded = fold_projection_bn(split)
    assert foldable_blocks(split) == {"expanded_conv_": 3, "block_1_": 6, "block_2_": 3}
    assert foldable_blocks(folded) == {}
    for prefix in ("expanded_conv_", "block_1_", "block_2_"):
        with pytest.raises(ValueError):
            folded.get_layer(prefix + "project_BN")
        assert folded.get_layer(prefix + "project_s1").use_bias
    folded.get_layer("block_3_project_BN")  # a whole block keeps its BN (the converter folds it)
    x = images(n=4, size=SIZE, seed=3)
    mid, out = _probe(tiny).predict(x, verbose=0)
    folded_mid, folded_out = _probe(folded).predict(x, verbose=0)
    np.testing.assert_allclose(folded_mid, mid, atol=1e-5)
    np.testing.assert_allclose(folded_out, out, atol=1e-5)
    with pytest.raises(ValueError, match="no split-expansion block with a projection BN"):
        fold_projection_bn(folded)


@pytest.mark.slow
def test_qat_of_a_split_model_agrees_with_the_unsplit_one(tmp_path):
    """QAT int8 of the split model (its tf_keras twin, projection BNs folded, then quantized):
    fully int8, the groups survive as separate tensors, and its int8 outputs agree with the
    unsplit QAT model's within a few quantization steps (each partial projection is requantized
    before the sum)."""
    from test_export import pattern_images, probe_classifier

    from keras_mnv2.deploy import export, memory, qat, tflite
    from keras_mnv2.split import foldable_blocks

    images, labels = pattern_images(size=64)
    model = probe_classifier(images, labels)
    split = split_expansion(model, (3, 6, 3) + (1,) * 14)
    twin = qat.tf_keras_twin(split, bn_momentum=0.99)  # checks the twin's outputs, too
    assert split_blocks(twin) == {"expanded_conv_": 3, "block_1_": 6, "block_2_": 3}
    lines = []
    assert foldable_blocks(twin)  # quantize folds them: nothing is left float
    qat_models = {"split": qat.quantize(twin, calibration_data=images, log=lines.append),
                  "whole": qat.quantize(qat.tf_keras_twin(model, bn_momentum=0.99),
                                        calibration_data=images, log=None)}
    assert lines[0].endswith("none left float")
    reports = {name: export.export_tflite(q, tmp_path / f"{name}.tflite", mode="qat",
                                          io_dtype="int8", output="logits")
               for name, q in qat_models.items()}
    assert reports["split"].float_ops == () and reports["whole"].float_ops == ()
    shapes = {name: [shapes[0] for _, shapes in memory.tflite_ops(report.path)]
              for name, report in reports.items()}
    # Conv1 (32x32x16) in groups of 6, 5, 5; block 1's expansion (32x32x48) in 6 groups of 8;
    # block 2's (16x16x48, as block 1's depthwise output and block 3's expansion) in 3 of 16.
    for whole_tensor in ((1, 32, 32, 16), (1, 32, 32, 48)):
        assert whole_tensor in shapes["whole"] and whole_tensor not in shapes["split"]
    assert shapes["whole"].count((1, 16, 16, 48)) == 4 and shapes["split"].count((1, 16, 16, 48)) == 1
    assert {(1, 32, 32, 6), (1, 32, 32, 5), (1, 16, 16, 16)} <= set(shapes["split"])
    arena = {name: memory.tflite_arena_bytes(report.path) for name, report in reports.items()}
    assert arena["split"] < 0.8 * arena["whole"]

    got = {name: tflite.run_signature(report.path, images)["logits"]
           for name, report in reports.items()}
    expected = model.predict(images, verbose=0)  # the float model
    error = {name: np.abs(got[name] - expected) for name in got}
    step = tflite.interpreter(reports["split"].path).get_output_details()[0]["quantization"][0]
    diff = np.abs(got["split"] - got["whole"])
    agreement = (got["split"].argmax(-1) == got["whole"].argmax(-1)).mean()
    print(f"split vs unsplit QAT int8: top-1 agreement {agreement:.3f}, max diff "
          f"{diff.max() / step:.1f} steps, mean {diff.mean() / step:.2f} steps (logits range "
          f"{np.ptp(got['whole']) / step:.0f} steps); against float: split mean "
          f"{error['split'].mean() / step:.2f} max {error['split'].max() / step:.1f}, unsplit "
          f"mean {error['whole'].mean() / step:.2f} max {error['whole'].max() / step:.1f} steps; "
          f"arena {arena['split']} vs {arena['whole']} bytes; accuracy "
          f"{(got['split'].argmax(-1) == labels).mean():.3f} vs "
          f"{(got['whole'].argmax(-1) == labels).mean():.3f}")
    assert agreement == 1.0
    assert (got["split"].argmax(-1) == labels).mean() == (got["whole"].argmax(-1) == labels).mean()
    # The split adds rounding (k requantized partial sums per split block), no more than the
    # unsplit model's own quantization error against float.
    assert error["split"].mean() < 2.0 * error["whole"].mean()
    assert diff.mean() < 2.0 * error["whole"].mean()
    assert error["split"].max() < 3.0 * error["whole"].max()


def test_split_model_records_its_expansion_splits(tmp_path, images):
    from keras_mnv2.record import builder_config

    model = _trained_like(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3),
                                                 classes=3, bn_momentum=0.0))
    split = split_expansion(model, 3)
    builder, arguments = builder_config(split)
    assert builder is keras_mnv2.MobileNetV2 and arguments["expansion_splits"] == 3
    rebuilt = builder(**arguments)  # the record builds the split graph itself

    def layers(m):
        return [(type(layer).__name__, layer.name) for layer in m.layers[1:]]

    assert layers(rebuilt) == layers(split)
    path = str(tmp_path / "split.keras")
    split.save(path)
    reloaded = keras.saving.load_model(path)
    x = images(n=2, size=SIZE)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
