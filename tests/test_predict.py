"""keras-mnv2 predict (pipelines/predict.py): Keras, LiteRT and MediaPipe runs on image files,
the annotated PNGs and the JSON."""

import json

import numpy as np
import pytest
from PIL import Image

from keras_mnv2.deploy import export
from pipelines import cli, predict

from test_export import tiny_classifier

NAMES = [f"thing {i}" for i in range(10)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 10-class classifier as .keras and .tflite (with labels), and two photos of other
    sizes than the model's 32 px."""
    root = tmp_path_factory.mktemp("predict")
    model = tiny_classifier()
    model.save(root / "tiny.keras")
    export.export_tflite(model, root / "tiny.tflite", labels=NAMES)
    rng = np.random.RandomState(1)
    photos = []
    for i, (h, w) in enumerate([(48, 64), (40, 40)]):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([255 * (xx / w), 255 * (yy / h), rng.uniform(0, 255, (h, w))], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"photo{i}.png")
        photos.append(str(root / f"photo{i}.png"))
    return {"root": root, "model": model, "photos": photos}


def _expected(model, path):
    x = predict._model_input(predict.load_image(path), (32, 32))
    return predict._softmax(np.asarray(model(x, training=False))[0])


def test_keras_and_litert_give_the_same_top5_and_write_png_and_json(files, tmp_path):
    root = files["root"]
    keras_out = predict.predict("imagenet", str(root / "tiny.keras"), files["photos"],
                                out_dir=tmp_path / "keras", run_dir=tmp_path / "no_run")
    lite_out = predict.predict("imagenet", str(root / "tiny.tflite"), files["photos"],
                               out_dir=tmp_path / "lite", run_dir=tmp_path / "no_run")
    assert (keras_out["runtime"], lite_out["runtime"]) == ("keras", "litert")
    for path, k, t in zip(files["photos"], keras_out["results"], lite_out["results"]):
        scores = _expected(files["model"], path)
        order = np.argsort(-scores)[:5]
        assert [c["index"] for c in k["top5"]] == order.tolist()
        assert [c["index"] for c in t["top5"]] == order.tolist()
        np.testing.assert_allclose([c["score"] for c in t["top5"]], scores[order], atol=1e-5)
        # names: the .tflite carries them in its metadata; the .keras run has none
        assert [c["name"] for c in t["top5"]] == [NAMES[i] for i in order]
        assert k["top5"][0]["name"] == f"class {order[0]}"
        with Image.open(t["annotated"]) as png:
            assert png.size == Image.open(path).size  # drawn on the photo, not the input
    written = json.loads((tmp_path / "lite" / "predictions.json").read_text())
    assert written == json.loads(json.dumps(lite_out))


def test_cli_predict_prints_and_refuses_bad_input(files, tmp_path, capsys):
    root = files["root"]
    code = cli.main(["predict", "imagenet", "--model", str(root / "tiny.tflite"),
                     "--out-dir", str(tmp_path), *files["photos"]])
    printed = capsys.readouterr().out
    assert code == 0 and "photo0.png" in printed and "predictions.json" in printed
    assert cli.main(["predict", "imagenet", "--model", str(root / "tiny.tflite"),
                     str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert cli.main(["predict", "imagenet", "--model", str(root / "tiny.keras"), "--runtime",
                     "mediapipe", *files["photos"]]) == 2
    assert "MediaPipe Tasks runs .tflite files" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not an image")
    assert cli.main(["predict", "imagenet", "--model", str(root / "tiny.tflite"),
                     str(tmp_path / "notes.txt")]) == 2
    assert "cannot read the image" in capsys.readouterr().err


def test_drawing_boxes_and_masks():
    pixels = np.full((60, 80, 3), 128, np.uint8)
    boxes = predict.draw(pixels, {"detections": [
        {"box": [10, 20, 50, 55], "index": 1, "name": "cat", "score": 0.9}]}, "detector")
    colour = tuple(int(v) for v in predict.palette(3)[2])
    assert np.asarray(boxes)[40, 10].tolist() == list(colour)  # the left edge of the box
    mask = np.zeros((30, 40), np.uint8)
    mask[:, 20:] = 2
    seg = np.asarray(predict.draw(pixels, {"mask": mask}, "segmenter", ["bg", "a", "b"]))
    assert seg.shape == (60, 80, 3)
    assert seg[50, 10].tolist() == [128, 128, 128]  # background left as it was
    assert seg[50, 70].tolist() != [128, 128, 128]  # class 2 coloured


@pytest.mark.skipif(predict.mediapipe_python() is None,
                    reason="no MediaPipe environment (make mediapipe-venv)")
def test_mediapipe_runtime_agrees_with_litert_at_the_model_size(files, tmp_path):
    photo = tmp_path / "photo32.png"
    Image.open(files["photos"][0]).resize((32, 32)).save(photo)  # no resizing left to do
    lite = predict.predict("imagenet", str(files["root"] / "tiny.tflite"), [str(photo)],
                           out_dir=tmp_path / "lite", run_dir=tmp_path)["results"][0]
    mp = predict.predict("imagenet", str(files["root"] / "tiny.tflite"), [str(photo)],
                         out_dir=tmp_path / "mp", runtime="mediapipe", run_dir=tmp_path)
    assert mp["versions"]["mediapipe"].startswith("1.")
    got = mp["results"][0]["top5"]
    assert [c["name"] for c in got] == [c["name"] for c in lite["top5"]]
    np.testing.assert_allclose([c["score"] for c in got], [c["score"] for c in lite["top5"]],
                               atol=1e-5)
