"""keras_mnv2.presets: the table; the download path, over HTTP on 127.0.0.1, of archives laid
out as the publishers lay them out (written here from models saved under the official names);
the cache; one clear error and an empty cache for a wrong checksum, a cut archive, a cut
connection and a refused one; local files; the class names the models carry."""

import dataclasses
import http.server
import io
import json
import os
import socket
import tarfile
import threading

import numpy as np
import pytest

import keras_mnv2
from keras_mnv2 import imagenet, presets
from keras_mnv2.errors import InputError

from test_convert import _perturbed, _write_official_checkpoint

SLIM = "mobilenet_v2_0.35_96"  # the smallest TF-slim checkpoint
SLIM_FILE = SLIM + ".tgz"


def _serve(files):
    """An HTTP server on 127.0.0.1 (port 0) for ``files`` ({path: bytes}); paths under /short/
    announce the whole length and send half (a connection cut). Returns (server, hits)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path.replace("/short/", "/ok/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if self.path.startswith("/short/") else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def _tar_gz(files):
    """A .tar.gz of {name in the archive: bytes or a file path}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            if isinstance(content, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.add(content, arcname=name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    """``mobilenet_v2_0.35_96.tgz`` as TF-slim publishes it: the checkpoint under the official
    variable names and the info file, at the archive's top level."""
    root = tmp_path_factory.mktemp("slim")
    source = _perturbed(keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                               classes=1001))
    _write_official_checkpoint(source, "classifier", root / f"{SLIM}.ckpt")
    files = {path.name: path for path in sorted(root.iterdir())}
    files[f"{SLIM}_info.txt"] = b"Model: mobilenet_v2_0.35_96\n"
    return {"model": source, "archive": _tar_gz(files)}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty Keras home (``KERAS_HOME``) holding only ImageNet's class index file, so that
    no name is looked up on the network."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    index = {str(i): [f"n{i:08d}", f"name {i}"] for i in range(1000)}
    (home / "models" / "imagenet_class_index.json").write_text(json.dumps(index))
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(imagenet, "_class_index", None)
    return home


def _cached(home):
    folder = home / "models" / "keras_mnv2"
    return sorted(os.listdir(folder)) if folder.exists() else []


def _same_classifier(a, b, x):
    pa, pb = a.predict(x, verbose=0), b.predict(x, verbose=0)
    np.testing.assert_allclose(np.log(pb), np.log(pa), atol=1e-4)


def test_the_table_lists_every_published_model():
    table = keras_mnv2.presets()
    names = [row.name for row in table]
    widths = [(1.4, 224), (1.3, 224)] + [(a, s) for a in (1.0, 0.75, 0.5, 0.35)
                                         for s in (224, 192, 160, 128, 96)]
    for alpha, size in widths:
        slim = presets.PRESETS[f"mobilenet_v2_{alpha}_{size}"]
        assert slim.url == (f"https://storage.googleapis.com/mobilenet_v2/checkpoints/"
                            f"mobilenet_v2_{alpha}_{size}.tgz")
        keras_file = presets.PRESETS[f"mobilenet_v2_{alpha}_{size}_keras"]
        assert keras_file.url.endswith(f"/keras-applications/mobilenet_v2/mobilenet_v2_weights_"
                                       f"tf_dim_ordering_tf_kernels_{alpha}_{size}.h5")
        assert slim.input_size == keras_file.input_size == size
    assert names[-3:] == ["ssdlite_mobilenet_v2_coco", "deeplabv3_mnv2_pascal_train_aug",
                          "deeplabv3_mnv2_dm05_pascal_trainaug"]
    assert presets.PRESETS["ssdlite_mobilenet_v2_coco"].url == (
        "http://download.tensorflow.org/models/object_detection/"
        "ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz")
    assert len(table) == 2 * len(widths) + 3
    assert presets.PRESETS["mobilenet_v2_1.0_224"].accuracy.startswith("top-1 71.8")
    assert "75.32" in presets.PRESETS["deeplabv3_mnv2_pascal_train_aug"].accuracy
    assert [row.name for row in keras_mnv2.presets("deeplab")] == names[-2:]
    text = str(table)
    print(text.splitlines()[0])
    assert text.splitlines()[0].split() == ["name", "kind", "trained", "on", "published",
                                            "accuracy", "input", "parameters", "address"]
    # the parameter counts are those of the models as built
    for name, classes in ((SLIM, 1001), (SLIM + "_keras", 1000)):
        built = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), classes=classes)
        assert built.count_params() == presets.PRESETS[name].parameters
    with pytest.raises(InputError, match="kind must be one of"):
        keras_mnv2.presets("detector")


def test_download_converts_and_caches_once_then_reads_the_cache(slim, home, monkeypatch,
                                                                images):
    server, hits = _serve({f"/ok/{SLIM_FILE}": slim["archive"]})
    monkeypatch.setenv(presets.BASE_ENV, f"http://127.0.0.1:{server.server_port}/ok")
    try:
        model = keras_mnv2.MobileNetV2.from_preset(SLIM)
        assert hits == [f"/ok/{SLIM_FILE}"]
        assert _cached(home) == [SLIM + ".keras", SLIM_FILE]  # the download, its conversion
        x = images(2)
        _same_classifier(slim["model"], model, x)
        assert len(model.labels) == 1001 and model.labels[:2] == ("background", "name 0")
        again = keras_mnv2.MobileNetV2.from_preset(SLIM)
        assert len(hits) == 1  # read from the cache
        _same_classifier(model, again, x)
        assert again.labels == model.labels  # the names travel in the .keras record
    finally:
        server.shutdown()
    # the three-line form, and decode_predictions with the model's names
    result = keras_mnv2.predict(again, (x[0] * 127.5 + 127.5).astype(np.uint8))
    best = result["top5"][0]
    assert best["name"] == again.labels[best["index"]]
    decoded = keras_mnv2.decode_predictions(again.predict(x, verbose=0), top=2, labels=again)
    assert decoded[0][0][1] == again.labels[decoded[0][0][0]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("failure", ["checksum", "cut archive", "cut connection", "refused"])
def test_a_failed_download_is_one_clear_error_and_leaves_nothing(failure, slim, home,
                                                                 monkeypatch, capsys):
    archive = slim["archive"]
    server, hits = _serve({f"/ok/{SLIM_FILE}": archive,
                           f"/cut/{SLIM_FILE}": archive[:len(archive) // 2]})
    base = f"http://127.0.0.1:{server.server_port}"
    base, match = {
        "checksum": (base + "/ok", "does not match its sha256"),
        "cut archive": (base + "/cut", "is broken .*not a whole tar archive"),
        "cut connection": (base + "/short", "could not download"),
        "refused": (f"http://127.0.0.1:{_free_port()}/models", "could not download"),
    }[failure]
    if failure == "checksum":
        monkeypatch.setitem(presets.PRESETS, SLIM, dataclasses.replace(
            presets.PRESETS[SLIM], sha256="0" * 64))
    monkeypatch.setenv(presets.BASE_ENV, base)
    try:
        with pytest.raises(presets.DownloadError, match=match) as info:
            keras_mnv2.MobileNetV2.from_preset(SLIM)
    finally:
        server.shutdown()
    message = str(info.value)
    print(message)
    assert f"{base}/{SLIM_FILE}" in message  # names the address
    assert _cached(home) == []  # nothing kept, not even a partial file
    if failure == "refused":  # offline: where to put the file, and the local form
        assert os.path.join(str(home), "models", "keras_mnv2", SLIM_FILE) in message
        assert f"from_preset('path/to/{SLIM_FILE}')" in message
        from pipelines import cli

        capsys.readouterr()
        assert cli.main(["predict", "--preset", SLIM, "photo.png"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("keras-mnv2: error: preset") and err.count("\n") == 1


def test_a_local_file_stands_in_for_the_download(slim, home, tmp_path, monkeypatch, images):
    monkeypatch.setenv(presets.BASE_ENV, f"http://127.0.0.1:{_free_port()}/never")
    path = tmp_path / SLIM_FILE
    path.write_bytes(slim["archive"])
    model = keras_mnv2.MobileNetV2.from_preset(str(path))  # converted, not cached
    _same_classifier(slim["model"], model, images(1))
    assert len(model.labels) == 1001 and _cached(home) == []
    # the file put where the offline error says: read from there, converted and cached
    folder = home / "models" / "keras_mnv2"
    folder.mkdir()
    (folder / SLIM_FILE).write_bytes(slim["archive"])
    cached = keras_mnv2.MobileNetV2.from_preset(SLIM)
    _same_classifier(model, cached, images(1))
    assert _cached(home) == [SLIM + ".keras", SLIM_FILE]


def test_kinds_and_unknown_names_are_refused_before_any_download(home, monkeypatch):
    server, hits = _serve({})
    monkeypatch.setenv(presets.BASE_ENV, f"http://127.0.0.1:{server.server_port}/ok")
    try:
        with pytest.raises(InputError, match=r"a classifier model: load it with "
                                             r"keras_mnv2.MobileNetV2.from_preset"):
            keras_mnv2.SSDLite.from_preset(SLIM)
        with pytest.raises(InputError, match="neither a preset name"):
            keras_mnv2.DeepLabV3.from_preset("deeplabv3_no_such_model")
    finally:
        server.shutdown()
    assert hits == [] and _cached(home) == []


def test_an_object_detection_api_archive_gives_coco_names_and_its_anchors(home, tmp_path,
                                                                         monkeypatch, images):
    """The Object Detection API's layout (a folder with model.ckpt.* and pipeline.config), at a
    small width and size: the model gets the 91 COCO columns' names and the config's anchors."""
    source = _perturbed(keras_mnv2.SSDLite(num_classes=90, alpha=0.35, input_size=96))
    folder = tmp_path / "ssdlite_mobilenet_v2_coco_2018_05_09"
    folder.mkdir()
    _write_official_checkpoint(source, "ssdlite", folder / "model.ckpt")
    (folder / "pipeline.config").write_text("model { ssd { num_classes: 90 } }\n")
    archive = _tar_gz({f"{folder.name}/{p.name}": p for p in sorted(folder.iterdir())})
    server, hits = _serve({f"/ok/{folder.name}.tar.gz": archive})
    entry = dataclasses.replace(presets.PRESETS["ssdlite_mobilenet_v2_coco"],
                                name="ssdlite_tiny", input_size=96,
                                options=(("input_size", 96),))
    try:
        model = presets.load(entry, kind="ssdlite",
                             url=f"http://127.0.0.1:{server.server_port}/ok/{folder.name}.tar.gz")
    finally:
        server.shutdown()
    assert len(hits) == 1 and _cached(home) == [f"{folder.name}.tar.gz", "ssdlite_tiny.keras"]
    assert len(model.labels) == 91 and model.labels[:2] == ("background", "person")
    assert model.labels[12] is None  # an id COCO leaves unused
    np.testing.assert_array_equal(model.anchors, keras_mnv2.ssdlite_anchors(
        96, aspect_ratios=(1.0, 2.0, 0.5, 3.0, 0.3333)))
    x = images(1)
    np.testing.assert_allclose(model.predict(x, verbose=0)["classes"],
                               source.predict(x, verbose=0)["classes"], atol=1e-4)
    found = keras_mnv2.predict(model, (x[0] * 127.5 + 127.5).astype(np.uint8), min_score=0.0)
    names = {d["name"] for d in found["detections"]}
    assert names and names <= {n if n else f"class {i}" for i, n in enumerate(model.labels)}
