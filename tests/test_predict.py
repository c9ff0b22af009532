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


def test_a_keras_detector_decodes_with_its_own_anchors(files, tmp_path, capsys):
    import keras_mnv2
    from keras_mnv2.detection.postprocess import decode_detections

    model = keras_mnv2.SSDLite(num_classes=3, alpha=0.35, input_size=96, min_scale=0.1)
    model.labels = ("background", "cat", "dog", "bird")
    assert np.abs(model.anchors - keras_mnv2.ssdlite_anchors(96)).max() > 0.01
    model.save(tmp_path / "det.keras")
    photo = files["photos"][0]
    out = predict.predict("coco", str(tmp_path / "det.keras"), [photo], out_dir=tmp_path / "out",
                          run_dir=tmp_path / "no_run", min_score=0.0)
    pixels = predict.load_image(photo)
    h, w = pixels.shape[:2]
    raw = model.predict(predict._model_input(pixels, (96, 96)), verbose=0)
    expected = decode_detections(raw["boxes"], raw["classes"], model.anchors,
                                 score_threshold=0.0)
    n = int(expected["num_detections"][0])
    boxes = np.asarray(expected["boxes"])[0, :n][:, [1, 0, 3, 2]] * [w, h, w, h]
    found = out["results"][0]["detections"]
    np.testing.assert_allclose([d["box"] for d in found], boxes, atol=1e-3)
    assert {d["name"] for d in found} <= {"cat", "dog", "bird"}  # the model's own names
    # the same .keras without a job: the model says what it is
    code = cli.main(["predict", "--model", str(tmp_path / "det.keras"), "--min-score", "0",
                     "--out-dir", str(tmp_path / "nojob"), photo])
    assert code == 0 and f"{n} boxes" in capsys.readouterr().out
    again = json.loads((tmp_path / "nojob" / "predictions.json").read_text())
    np.testing.assert_allclose([d["box"] for d in again["results"][0]["detections"]], boxes,
                               atol=1e-3)


def test_images_may_be_folders(files, tmp_path):
    out = predict.predict("imagenet", str(files["root"] / "tiny.keras"), [str(files["root"])],
                          out_dir=tmp_path, run_dir=tmp_path / "no_run")
    assert [r["image"] for r in out["results"]] == files["photos"]  # the folder's images only


@pytest.mark.slow
def test_predict_preset_names_the_official_files_classes(real_dir, tmp_path, capsys):
    """The offline stand-in for a download: a local official file as the preset."""
    import os

    deeplab = os.path.join(real_dir, "deeplabv3_mnv2_pascal_quant.tflite")
    bird = os.path.join(real_dir, "bird_segmentation.bmp")
    assert cli.main(["predict", "--preset", deeplab, bird, "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "bird_segmentation.png: background" in printed and "bird" in printed.split(":")[-2]
    report = json.loads((tmp_path / "predictions.json").read_text())
    assert set(report["results"][0]["classes"]) == {"background", "bird"}
    assert Image.open(tmp_path / "bird_segmentation.png").size == (513, 513)
    classifier = os.path.join(real_dir, "mobilenet_v2_1.0_224_quant.tflite")
    cat = os.path.join(real_dir, "cat.bmp")
    parrot = os.path.join(real_dir, "parrot.jpg")
    assert cli.main(["predict", "--preset", classifier, cat, parrot, "--out-dir",
                     str(tmp_path / "imagenet")]) == 0
    printed = capsys.readouterr().out
    print(printed)
    results = json.loads((tmp_path / "imagenet" / "predictions.json").read_text())["results"]
    assert results[0]["top5"][0]["name"] == "Egyptian cat"
    assert results[1]["top5"][0]["name"] == "macaw"
