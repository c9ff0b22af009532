import numpy as np
import pytest

import keras_mnv2
from keras_mnv2 import imagenet


def test_preprocess_input_scales_to_minus_one_one():
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(keras_mnv2.preprocess_input(x), [[[[-1.0, 0.0, 1.0]]]])


@pytest.fixture
def no_class_names(offline_keras_home, monkeypatch):
    import keras

    monkeypatch.setattr(imagenet, "_class_index", None)

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    yield
    monkeypatch.setattr(imagenet, "_class_index", None)


def test_decode_predictions_offline_uses_wordnet_ids(no_class_names):
    preds = np.zeros((2, 1000), dtype="float32")
    preds[0, 0], preds[0, 5] = 0.9, 0.1
    preds[1, 999] = 1.0
    with pytest.warns(UserWarning, match="imagenet_class_index.json"):
        decoded = keras_mnv2.decode_predictions(preds, top=2)
    assert decoded[0][0] == ("n01440764", "n01440764", pytest.approx(0.9))
    assert decoded[0][1][0] == "n01496331"
    assert decoded[1][0][0] == "n15075141"


def test_decode_predictions_uses_cached_names(offline_keras_home, monkeypatch):
    import json

    monkeypatch.setattr(imagenet, "_class_index", None)
    index = {str(i): [f"n{i:08d}", f"class {i}"] for i in range(1000)}
    (offline_keras_home / "models" / "imagenet_class_index.json").write_text(json.dumps(index))
    preds = np.zeros((1, 1000))
    preds[0, 42] = 1
    assert keras_mnv2.decode_predictions(preds, top=1) == [[("n00000042", "class 42", 1.0)]]
    monkeypatch.setattr(imagenet, "_class_index", None)


def test_decode_predictions_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(batch, 1000\)"):
        keras_mnv2.decode_predictions(np.zeros((1, 10)))
