"""keras-mnv2 export --model FILE.keras | --preset NAME (pipelines/export_model.py): any model to
.tflite files, its class names in the metadata, int8 calibrated on a folder of photos."""

import numpy as np
from PIL import Image

import keras_mnv2
from keras_mnv2.deploy import metadata, tflite
from pipelines import cli


def test_export_a_keras_model_with_its_class_names(tmp_path, capsys):
    model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=3)
    model.labels = ("cat", "dog", "bird")
    model.save(tmp_path / "pets.keras")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rng.randint(0, 256, (60, 80, 3)).astype(np.uint8)).save(
            photos / f"{i}.png")
    assert cli.main(["export", "--model", str(tmp_path / "pets.keras"),
                     "--calibration-images", str(photos)]) == 0
    print(capsys.readouterr().out)
    for mode in ("float32", "int8"):  # beside the .keras file
        path = tmp_path / f"pets_{mode}.tflite"
        assert metadata.labels(str(path)) == ["cat", "dog", "bird"]
        assert tflite.run(str(path), np.zeros((1, 96, 96, 3), np.float32)).shape == (1, 3)
    assert cli.main(["export", "--model", str(tmp_path / "pets.keras"), "--modes", "int8"]) == 2
    assert "--calibration-images" in capsys.readouterr().err
