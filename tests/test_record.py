"""Models carry their builder and its arguments (keras_mnv2/record.py)."""

import inspect
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mnv2
from keras_mnv2.deploy import export, qat
from keras_mnv2.detection.ssdlite import model_anchors, ssdlite_anchors
from keras_mnv2.record import BuiltModel, builder_config, read_record
from keras_mnv2.segmentation.deeplab import DeepLabV3

CASES = {
    "classifier": (keras_mnv2.MobileNetV2,
                   dict(alpha=0.35, input_shape=(96, 96, 3), classes=5,
                        classifier_activation=None, bn_momentum=0.9)),
    # non-default anchor settings and extra depths: nothing a layer scan could recover
    "ssdlite": (keras_mnv2.SSDLite,
                dict(num_classes=3, alpha=0.35, input_size=96, min_scale=0.1, max_scale=0.9,
                     aspect_ratios=(1.0, 2.0, 0.5), extra_depths=(64, 64, 32, 32))),
    "deeplab": (DeepLabV3, dict(num_classes=4, alpha=0.35, input_shape=(97, 97, 3),
                                output_stride=8, aspp=False, dropout_rate=0.0)),
}


def _perturbed(model, seed=3):
    rng = np.random.RandomState(seed)
    model.set_weights([w + rng.uniform(0, 0.1, w.shape) if w.ndim == 1 else w
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("kind", sorted(CASES))
def test_keras_round_trip_keeps_what_export_and_qat_need(kind, tmp_path):
    builder, kwargs = CASES[kind]
    model = _perturbed(builder(**kwargs))
    path = str(tmp_path / "last.keras")  # the file name a detection run writes
    model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects
    assert isinstance(reloaded, BuiltModel) and reloaded.name == model.name
    found_builder, found = qat.builder_config(reloaded)
    assert found_builder is builder
    for key, value in kwargs.items():
        assert found[key] == value, key
    assert found == builder_config(model)[1]
    assert read_record(path) == (f"{builder.__module__}.{builder.__name__}", found)

    size = int(model.inputs[0].shape[1])
    x = np.random.RandomState(0).uniform(-1, 1, (1, size, size, 3)).astype("float32")
    for a, b in zip(tf.nest.flatten(model(x)), tf.nest.flatten(reloaded(x))):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b),
                                      keras.ops.convert_to_numpy(a))

    twin = qat.tf_keras_twin(reloaded)  # checks the twin's outputs against the model
    assert builder_config(twin)[1]["framework"] == "tf_keras"
    serving_function = export.serving_function(reloaded)[0]  # no anchors passed by hand
    assert callable(serving_function)
    if kind == "ssdlite":
        expected = ssdlite_anchors(96, min_scale=0.1, max_scale=0.9, aspect_ratios=(1.0, 2.0, 0.5))
        assert expected.shape[0] != ssdlite_anchors(96).shape[0]
        np.testing.assert_array_equal(reloaded.anchors, expected)
        np.testing.assert_array_equal(twin.anchors, expected)
        del reloaded.anchors  # the record alone still gives them
        np.testing.assert_array_equal(model_anchors(reloaded), expected)
        from pipelines.jobs.deploy import run_anchors  # the deploy commands: read off the file

        np.testing.assert_array_equal(run_anchors(str(tmp_path), recipe=None), expected)


def test_record_holds_every_builder_argument():
    for builder, kwargs in CASES.values():
        model = builder(**kwargs)
        recorded_builder, arguments = builder_config(model)
        assert recorded_builder is builder
        # every parameter of the signature, so an argument added later is recorded too
        assert list(arguments) == list(inspect.signature(builder).parameters)


def test_record_values_are_plain_and_weight_sources_are_not_recorded(tmp_path):
    source = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=3)
    path = str(tmp_path / "w.weights.h5")
    source.save_weights(path)
    model = keras_mnv2.MobileNetV2(alpha=np.float32(0.35), input_shape=(np.int64(64), 64, 3),
                                   classes=np.int64(3), weights=path)
    _, arguments = builder_config(model)
    assert arguments["alpha"] == 0.35 and type(arguments["alpha"]) is float
    assert arguments["input_shape"] == (64, 64, 3)
    assert type(arguments["input_shape"][0]) is int and type(arguments["classes"]) is int
    assert arguments["weights"] is None  # the weights travel with the model, not the record


def test_model_on_an_input_tensor_has_no_record_but_still_saves(tmp_path):
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs)
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_tensor=x, classes=3)
    assert builder_config(model) is None
    path = str(tmp_path / "on_tensor.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert read_record(path) is None
    assert "scale" in [layer.name for layer in reloaded.layers]
    with pytest.raises(ValueError, match="carries no builder record"):
        qat.builder_config(reloaded)


def test_config_names_only_keras_mnv2_builders(tmp_path):
    for builder in ("os.system", "keras_mnv2.record.read_record", "keras_mnv2.nothing.Here"):
        with pytest.raises(ValueError, match="builder"):
            BuiltModel.from_config({"name": "m", "builder": builder, "arguments": {}})
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.keras is not a .keras model file"):
        read_record(str(bad))
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    with pytest.raises(ValueError, match="empty.keras"):
        read_record(str(tmp_path / "empty.keras"))


def test_round_trip_keeps_what_was_set_after_building(tmp_path):
    """What a plain functional model keeps through .keras, a builder's model keeps too: layers
    frozen for fine-tuning, the weight decay the jobs attach, dtype policies (the record alone
    rebuilt the builder's defaults: all trainable, no regularizer, the global policy)."""
    from pipelines.jobs.weight_decay import add_weight_decay, decayed_variables

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")  # the model's layers take it when built
    try:
        model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), classes=3,
                                       classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(previous)
    model.get_layer("predictions").dtype_policy = "float32"
    for name in ("bn_Conv1", "block_1_project_BN"):
        model.get_layer(name).trainable = False
    add_weight_decay(model, 4e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert builder_config(reloaded) == builder_config(model)
    for name in ("bn_Conv1", "block_1_project_BN"):
        assert reloaded.get_layer(name).trainable is False, name
    assert len(reloaded.trainable_weights) == len(model.trainable_weights)
    assert [v.path for v in decayed_variables(reloaded)] == \
        [v.path for v in decayed_variables(model)] != []
    assert reloaded.get_layer("Conv1").kernel_regularizer.get_config() == {"l2": 2e-5}
    assert len(reloaded.losses) == len(model.losses)

    def policies(m):  # (Keras itself reloads an InputLayer with the global policy)
        return {layer.name: layer.dtype_policy.name for layer in m.layers[1:]}

    assert policies(reloaded) == policies(model)
    assert policies(reloaded)["Conv1"] == "mixed_bfloat16"
    assert policies(reloaded)["predictions"] == "float32"


def test_every_model_made_here_keeps_its_record_or_has_none_and_its_anchors(tmp_path):
    """Split, folded and Keras-3-QAT copies of an SSDLite: a .keras round trip gives back the
    record (or none, as before saving) and the anchors; a model without anchors raises."""
    from keras_mnv2.deploy import keras_qat
    from keras_mnv2.errors import NoAnchorsError
    from keras_mnv2.split import fold_projection_bn, split_expansion

    model = _perturbed(keras_mnv2.SSDLite(num_classes=2, alpha=0.35, input_size=96,
                                          min_scale=0.1))
    expected = ssdlite_anchors(96, min_scale=0.1)
    split = split_expansion(model, 2)
    made = {"split": split, "folded": fold_projection_bn(split),
            "qat": qat.quantize(model, scheme="keras", log=None)}
    assert builder_config(split)[1]["expansion_splits"] == 2
    for kind, copy in made.items():
        path = str(tmp_path / f"{kind}.keras")
        copy.save(path)
        reloaded = keras.saving.load_model(path)
        assert builder_config(reloaded) == builder_config(copy), kind
        np.testing.assert_array_equal(model_anchors(reloaded), expected)
        np.testing.assert_array_equal(reloaded.anchors, expected)
    assert builder_config(made["folded"]) is None and builder_config(made["qat"]) is None
    assert keras_qat.is_keras_quantized(reloaded)
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs), name="plain")
    with pytest.raises(NoAnchorsError, match="'plain' carries no anchors"):
        model_anchors(plain)
    plain.anchors = np.float32(0.0)  # not a table: never handed on as if it were one
    with pytest.raises(NoAnchorsError, match=r"anchors of shape \(\), not an \[N, 4\] table"):
        model_anchors(plain)
