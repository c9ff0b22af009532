"""TFLite metadata (keras_mnv2.deploy.metadata): the schema round trip, the refusals, and every
exported model run in MediaPipe Tasks against ai_edge_litert on the same images.

MediaPipe 1.2.x needs absl-py 2 and cannot join the main environment (tensorflow-model-
optimization pins absl-py 1.x): ``make test`` builds ``.venv-mediapipe`` (``make
mediapipe-venv``) and these tests run MediaPipe there, through pipelines/mediapipe_runner.py.
"""

import dataclasses
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from keras_mnv2.deploy import export, metadata
from pipelines import predict

from test_export import (pattern_images, probe_classifier, probe_segmenter, quadrant_images,
                         spread_ssdlite, tiny_classifier)

needs_mediapipe = pytest.mark.skipif(
    predict.mediapipe_python() is None,
    reason="no MediaPipe environment: `make mediapipe-venv` creates .venv-mediapipe (or set "
           "KERAS_MNV2_MEDIAPIPE_PYTHON); mediapipe 1.2.x cannot share the main venv (absl-py 2)")


# ----------------------------------------------------------------------------------------------
# The writer alone


def test_description_round_trips_through_our_reader_and_versions_follow_the_schema():
    anchors = np.array([[0.25, 0.5, 0.2, 0.3], [0.75, 0.5, 0.4, 0.4]], np.float32)
    for kind, output, classes, labels in (
            ("classifier", "probabilities", 3, ["cat", "dog", "owl"]),
            ("detector", "detections", 3, ["background", "cat", "dog"]),
            ("detector", "tasks", 3, None),
            ("segmenter", "logits", 4, None)):
        description, files = metadata.describe(kind, output, (96, 80, 3), classes,
                                               labels=labels, anchors=anchors)
        buffer = metadata.build("ModelMetadata", description, metadata.METADATA_IDENTIFIER)
        assert buffer[4:8] == b"M001"
        assert metadata.parse(buffer) == description
        names = files["labels.txt"].decode().splitlines()
        assert names == ({"classifier": ["cat", "dog", "owl"],
                          "detector": ["cat", "dog"] if labels else ["class 1", "class 2"],
                          "segmenter": ["class 0", "class 1", "class 2", "class 3"]}[kind])
        expected = {"detections": "1.2.0", "tasks": "1.5.0"}.get(output, "1.0.0")
        assert description["min_parser_version"] == expected
        image = description["subgraph_metadata"][0]["input_tensor_metadata"][0]
        assert image["process_units"][0]["options"] == (
            "NormalizationOptions", {"mean": [127.5], "std": [127.5]})
        assert image["stats"] == {"max": [1.0], "min": [-1.0]}
    # the detector's decoding options for MediaPipe's own decoder
    options = metadata.parse(metadata.detector_options(anchors, 2), "ObjectDetectorOptions",
                             metadata.DETECTOR_IDENTIFIER)
    first = options["ssd_anchors_options"]["fixed_anchors_schema"]["anchors"][0]
    assert first == {"x_center": 0.5, "y_center": 0.25, "width": pytest.approx(0.3),
                     "height": pytest.approx(0.2)}
    decoding = options["tensors_decoding_options"]
    assert (decoding["num_boxes"], decoding["num_classes"], decoding["y_scale"],
            decoding["h_scale"]) == (2, 2, 10.0, 5.0)


def test_bad_descriptions_and_unconsumable_exports_are_refused():
    with pytest.raises(metadata.MetadataError, match="2 labels for a model with 3 classes"):
        metadata.describe("classifier", "probabilities", (96, 96, 3), 3, labels=["a", "b"])
    with pytest.raises(metadata.MetadataError, match="int8: MediaPipe Tasks takes uint8"):
        metadata.describe("classifier", "probabilities", (96, 96, 3), 3, input_dtype="int8")
    with pytest.raises(metadata.MetadataError, match="int32 class map"):
        metadata.describe("segmenter", "mask", (64, 64, 3), 4)
    with pytest.raises(metadata.MetadataError, match="background column"):
        metadata.describe("detector", "raw", (96, 96, 3), 4)
    with pytest.raises(metadata.MetadataError, match="has no field"):
        metadata.build("Stats", {"mean": [1.0]}, b"M001")
    model = tiny_classifier()
    # refused before converting: no file is written
    with pytest.raises(metadata.MetadataError, match="int8: MediaPipe Tasks"):
        export.export_tflite(model, "/nonexistent/x.tflite", mode="int8", io_dtype="int8",
                             representative_data=np.zeros((1, 32, 32, 3)), metadata=True)
    with pytest.raises(ValueError, match="metadata must be 'auto', True or False"):
        export.export_tflite(model, "/nonexistent/x.tflite", metadata="yes")
    with pytest.raises(ValueError, match="labels are written into the metadata"):
        export.export_tflite(model, "/nonexistent/x.tflite", metadata=False, labels=["a"] * 10)


def test_auto_warns_and_writes_none_where_no_tasks_runtime_can_consume_the_export():
    model = tiny_classifier()
    with pytest.warns(UserWarning, match="without TFLite metadata.*int8: MediaPipe"):
        content, version = metadata.for_export(model, b"flatbuffer", "classifier",
                                               "probabilities", io_dtype="int8")
    assert (content, version) == (b"flatbuffer", None)
    with pytest.warns(UserWarning, match="int32 class map"):
        metadata.for_export(model, b"flatbuffer", "segmenter", "mask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metadata.for_export(model, b"x", "classifier", "logits", metadata=False) == \
            (b"x", None)


def test_export_writes_metadata_by_default_and_omits_it_on_request(tmp_path):
    model = tiny_classifier()
    labels = [f"digit {i}" for i in range(10)]
    report = export.export_tflite(model, tmp_path / "with.tflite", labels=labels)
    assert report.metadata == "1.0.0"
    description, files = metadata.read_description(report.path)
    assert description["subgraph_metadata"][0]["output_tensor_metadata"][0]["name"] == \
        "probability"
    assert metadata.labels(report.path) == labels and set(files) == {"labels.txt"}
    raw = export.export_tflite(model, tmp_path / "raw.tflite", output="raw")  # the logits
    assert metadata.read_description(raw.path)[0]["subgraph_metadata"][0][
        "output_tensor_metadata"][0]["name"] == "score"
    bare = export.export_tflite(model, tmp_path / "without.tflite", metadata=False)
    assert bare.metadata is None and metadata.read(bare.path) == (None, {})
    # the metadata changes nothing the interpreter computes
    x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    from keras_mnv2.deploy import tflite

    np.testing.assert_array_equal(tflite.run_signature(report.path, x)["probabilities"],
                                  tflite.run_signature(bare.path, x)["probabilities"])
    # populating again replaces the metadata instead of adding a second one
    with open(report.path, "rb") as f:
        content = f.read()
    again = metadata.populate(content, *metadata.describe("classifier", "probabilities",
                                                          (32, 32, 3), 10))
    assert metadata.labels(again) == [f"class {i}" for i in range(10)]
    assert metadata.read(metadata.remove(again)) == (None, {})


# ----------------------------------------------------------------------------------------------
# MediaPipe Tasks against LiteRT


def _png(array, path):
    """Images in [-1, 1] -> uint8 PNG (the runtimes normalize back exactly: (p - 127.5)/127.5
    of the stored pixels)."""
    pixels = np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The three models (tiny configs) exported float32 and int8, with metadata, plus the raw
    SSDLite for MediaPipe's decoder and a raw one without metadata; the images as PNG; and one
    run of all of them in MediaPipe Tasks and LiteRT."""
    if predict.mediapipe_python() is None:
        pytest.skip("no MediaPipe environment (make mediapipe-venv)")
    root = tmp_path_factory.mktemp("metadata")
    files = {}

    cls_images, cls_labels = pattern_images(per_class=1)
    classifier = probe_classifier(*pattern_images())
    names = ["horizontal", "vertical", "diagonal", "checks"]
    files["classifier float32"] = export.export_tflite(
        classifier, root / "cls_f32.tflite", labels=names)
    files["classifier int8 uint8-io"] = export.export_tflite(
        classifier, root / "cls_u8.tflite", mode="int8", io_dtype="uint8",
        representative_data=pattern_images()[0], labels=names)

    detector = spread_ssdlite()
    det_images = pattern_images(per_class=1, classes=2, seed=3)[0]
    nms = export.NMS(max_detections=20, score_threshold=0.3, iou_threshold=0.6)
    det_names = ["background", "circle", "square", "triangle"]
    files["detector float32"] = export.export_tflite(detector, root / "det_f32.tflite", nms=nms,
                                                     labels=det_names)
    files["detector int8"] = export.export_tflite(
        detector, root / "det_i8.tflite", mode="int8", nms=nms,
        representative_data=pattern_images(classes=2)[0], labels=det_names)
    files["detector tasks"] = export.export_tflite(detector, root / "det_tasks.tflite",
                                                   output="tasks", labels=det_names)
    # the control: the float32 detector without its metadata
    with open(files["detector float32"].path, "rb") as f:
        (root / "det_bare.tflite").write_bytes(metadata.remove(f.read()))
    files["detector without metadata"] = dataclasses.replace(
        files["detector float32"], path=str(root / "det_bare.tflite"), metadata=None)

    seg_images, seg_masks = quadrant_images()
    segmenter = probe_segmenter(seg_images, seg_masks)
    seg_names = ["dark", "light", "red", "cyan"]
    files["segmenter float32"] = export.export_tflite(segmenter, root / "seg_f32.tflite",
                                                      labels=seg_names)
    files["segmenter int8"] = export.export_tflite(
        segmenter, root / "seg_i8.tflite", mode="int8", representative_data=seg_images,
        labels=seg_names)

    pngs = {"classifier": [_png(x, root / f"cls{i}.png") for i, x in enumerate(cls_images)],
            "detector": [_png(x, root / f"det{i}.png") for i, x in enumerate(det_images)],
            "segmenter": [_png(x, root / f"seg{i}.png") for i, x in enumerate(seg_images[:3])]}
    results = {}
    for kind in ("classifier", "detector", "segmenter"):
        keys = [k for k in files if k.startswith(kind)]
        out = predict.run_mediapipe([(files[k].path, kind) for k in keys], pngs[kind],
                                    root / "out", schema=True)
        results["versions"] = out["versions"]
        results.update(zip(keys, out["results"]))
    print("MediaPipe environment:", results["versions"])
    return {"files": files, "results": results, "labels": cls_labels, "masks": seg_masks,
            "detector": detector, "names": {"classifier": names, "detector": det_names,
                                            "segmenter": seg_names}}


def _array(value):
    """A runner output: a list, or {"npy": file} for the large ones."""
    return np.load(value["npy"]) if isinstance(value, dict) else np.asarray(value)


def _pixel_box_error(yxyx, box, size=96):
    """Pixels between MediaPipe's integer box (origin_x, origin_y, width, height) and a box
    (ymin, xmin, ymax, xmax) in pixels. MediaPipe clips the origin to the image; the far side
    is clipped in some cases and not in others (1.2.3), so either size counts."""
    ymin, xmin, ymax, xmax = yxyx
    x, y, w, h = box
    error = max(abs(x - max(xmin, 0.0)), abs(y - max(ymin, 0.0)))
    for low, high, got in ((xmin, xmax, w), (ymin, ymax, h)):
        error = max(error, min(abs(got - (high - low)),
                               abs(got - (min(high, size) - max(low, 0.0)))))
    return error


def _ok(result):
    assert "mediapipe_error" not in result, result["mediapipe_error"]
    return result["mediapipe"], result["litert"]


@needs_mediapipe
@pytest.mark.slow
@pytest.mark.parametrize("key", ["classifier float32", "classifier int8 uint8-io"])
def test_mediapipe_classifier_matches_litert(exported, key):
    mp, lite = _ok(exported["results"][key])
    names = exported["names"]["classifier"]
    top1 = []
    for got, ref in zip(mp, lite):
        scores = np.asarray(ref["probabilities"], np.float32)
        best = got["categories"][0]
        assert best["index"] == int(np.argmax(scores))
        assert best["name"] == names[best["index"]]
        for category in got["categories"]:
            assert category["score"] == pytest.approx(scores[category["index"]], abs=1e-5)
        top1.append(best["index"])
    print(key, "top-1", top1, "labels", list(exported["labels"]))
    assert np.mean(np.asarray(top1) == exported["labels"]) >= 0.75  # the probe's own accuracy


@needs_mediapipe
@pytest.mark.slow
@pytest.mark.parametrize("key", ["detector float32", "detector int8"])
def test_mediapipe_detector_matches_litert(exported, key):
    """Every detection: same class and score; boxes within 2 px. In int8 many scores tie
    (quantized), and among tied boxes the two runtimes' post-process kernels may keep
    different ones: 95% of the boxes there."""
    mp, lite = _ok(exported["results"][key])
    names = exported["names"]["detector"][1:]
    total = same_box = 0
    for got, ref in zip(mp, lite):
        n = int(np.ravel(ref["num_detections"])[0])
        boxes = np.asarray(ref["detection_boxes"])[:n] * 96  # ymin, xmin, ymax, xmax
        classes = np.asarray(ref["detection_classes"])[:n].astype(int)
        scores = np.asarray(ref["detection_scores"])[:n]
        assert len(got["detections"]) == n > 0
        for detection in got["detections"]:
            match = np.flatnonzero((np.abs(scores - detection["score"]) < 1e-5)
                                   & (classes == detection["index"]))
            assert len(match), f"no LiteRT detection for {detection}"
            same_box += min(_pixel_box_error(boxes[i], detection["box"]) for i in match) <= 2.0
            assert detection["name"] == names[detection["index"]]
        got_scores = sorted((d["index"], round(d["score"], 5)) for d in got["detections"])
        assert got_scores == sorted(zip(classes.tolist(), np.round(scores, 5).tolist()))
        total += n
    print(key, f"detections: {total}, same class and score: all, same box: {same_box}")
    assert same_box >= (total if "float32" in key else 0.95 * total)


@needs_mediapipe
@pytest.mark.slow
def test_mediapipe_decodes_the_raw_tasks_export_with_our_anchors(exported):
    """MediaPipe's own SSD decoder (anchors, box coder scales from DETECTOR_METADATA): each of
    its detections is one anchor's decoded box and best class score, computed here from the
    LiteRT outputs of the same file."""
    mp, lite = _ok(exported["results"]["detector tasks"])
    anchors = np.asarray(exported["detector"].anchors, np.float32)
    for got, ref in zip(mp, lite):
        location, score = _array(ref["location"]), _array(ref["score"])
        ty, tx, th, tw = location.T
        cy, cx = ty / 10 * anchors[:, 2] + anchors[:, 0], tx / 10 * anchors[:, 3] + anchors[:, 1]
        h, w = np.exp(th / 5) * anchors[:, 2], np.exp(tw / 5) * anchors[:, 3]
        corners = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1) * 96
        best, best_score = score.argmax(-1), score.max(-1)
        assert got["detections"]
        top = got["detections"][0]
        assert top["score"] == pytest.approx(best_score.max(), abs=1e-5)
        for detection in got["detections"]:
            match = np.flatnonzero((np.abs(best_score - detection["score"]) < 1e-5)
                                   & (best == detection["index"]))
            assert len(match), f"no anchor gives {detection}"
            assert min(_pixel_box_error(corners[i], detection["box"]) for i in match) <= 2.0


@needs_mediapipe
@pytest.mark.slow
@pytest.mark.parametrize("key", ["segmenter float32", "segmenter int8"])
def test_mediapipe_segmenter_matches_litert(exported, key):
    mp, lite = _ok(exported["results"][key])
    agreement, accuracy = [], []
    for i, (got, ref) in enumerate(zip(mp, lite)):
        mask = np.load(got["mask"]).reshape(exported["masks"][i].shape)
        logits = _array(ref["logits"])
        assert got["labels"] == exported["names"]["segmenter"]
        agreement.append(np.mean(mask == logits.argmax(-1)))
        accuracy.append(np.mean(mask == exported["masks"][i]))
    print(key, "MediaPipe vs LiteRT pixel agreement", agreement, "accuracy", accuracy)
    assert min(agreement) >= 0.999
    assert np.mean(accuracy) >= 0.7  # the probe's own accuracy; chance: 0.25


@needs_mediapipe
@pytest.mark.slow
def test_mediapipe_refuses_the_export_without_metadata(exported):
    """The control: the same detector file, its metadata removed, is refused by MediaPipe and
    still runs in LiteRT as before."""
    result = exported["results"]["detector without metadata"]
    with_metadata = exported["results"]["detector float32"]
    assert result["litert"] == with_metadata["litert"]
    assert "mediapipe" not in result
    assert re.search(r"metadata", result["mediapipe_error"], re.I), result["mediapipe_error"]


def _from_generated(value, table="ModelMetadata"):
    """The generated reader's object tree (camelCase attributes, unions as type + value) in our
    description's form (snake_case, unions as (name, fields))."""
    snake = {name: name for name, _ in metadata.SCHEMA[table]}
    out = {}
    for key, item in value.items():
        name = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)
        if name.endswith("_type") and name[:-5] in snake:
            continue
        kind = dict(metadata.SCHEMA[table])[name]
        if kind == "union":
            names = {v: k for k, v in metadata.UNIONS[(table, name)].items()}
            sub = names[value[key + "Type"]]
            out[name] = (sub, _from_generated(item, sub))
        elif kind.startswith("[") and kind[1:-1] in metadata.SCHEMA:
            out[name] = [_from_generated(v, kind[1:-1]) for v in item]
        elif kind in metadata.SCHEMA:
            out[name] = _from_generated(item, kind)
        else:
            out[name] = item
    return out


@needs_mediapipe
@pytest.mark.slow
def test_the_schema_reader_reads_our_metadata_back_identically(exported):
    """The control: mediapipe's generated reader of metadata_schema.fbs gives back, field for
    field, the description our writer was given (and our own reader gives the same)."""
    for key, report in exported["files"].items():
        schema = exported["results"][key]["schema"]
        ours, files = metadata.read_description(report.path)
        if key == "detector without metadata":
            assert schema["metadata"] is None and ours is None
            continue
        assert _from_generated(schema["metadata"]) == ours, key
        assert schema["files"] == ["labels.txt"] == list(files)
        assert ours["min_parser_version"] == report.metadata
    print("versions", exported["results"]["versions"])
