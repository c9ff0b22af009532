"""Three Keras backends (issue 17): the same weights give the same outputs on TensorFlow, JAX and
torch; each backend trains from tf.data and its loss falls; a .keras saved on one backend loads
on another; decoding + NMS agree.

KERAS_BACKEND is fixed when Keras is imported, so each backend runs ``tests/backends_worker.py``
in a subprocess, all of them on one shared folder. JAX comes with the test extras; torch is an
optional extra (PyPI's Linux wheel pulls ~4 GB of CUDA libraries: see docs/backends.md), and its
checks are skipped, saying so, where it is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_mnv2.detection.postprocess import class_wise_nms, decode_detections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "backends_worker.py")
OTHER_BACKENDS = ("jax", "torch")
MODELS = ("mobilenet_v2", "ssdlite", "deeplab_v3")


def _installed(backend):
    return backend == "tensorflow" or importlib.util.find_spec(backend) is not None


def _needs(backend):
    if not _installed(backend):
        extra = backend  # the jax and torch extras
        pytest.skip(f"{backend} is not installed (pip install -e '.[{extra}]', or make "
                    "test-torch; see docs/backends.md)")


def _work(backend, steps, folder):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")]
                                                    if p]))
    done = subprocess.run([sys.executable, WORKER, *steps, str(folder)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{backend} {steps} failed:\n{done.stdout}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs every step on every installed backend once; returns the shared folder."""
    folder = tmp_path_factory.mktemp("backends")
    _work("tensorflow", ["reference", "predict", "train", "decode"], folder)
    for backend in OTHER_BACKENDS:
        if _installed(backend):
            _work(backend, ["predict", "train", "crossload", "decode"], folder)
    _work("tensorflow", ["crossload"], folder)
    return folder


def _assert_close(actual, expected, what):
    """Within 1e-5 of the output's scale (max |expected|): elementwise relative error is
    meaningless for outputs near zero, where float32 rounding of the backends' kernels differs."""
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * scale, err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_same_weights_same_outputs(runs, backend, model):
    _needs(backend)
    reference = np.load(runs / f"out_tensorflow_{model}.npz")
    other = np.load(runs / f"out_{backend}_{model}.npz")
    assert set(reference) == set(other)
    for key in reference:
        assert np.std(reference[key]) > 1e-3, "a constant output would prove nothing"
        _assert_close(other[key], reference[key], f"{model} {key} on {backend}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ("tensorflow",) + OTHER_BACKENDS)
def test_fit_from_tf_data_lowers_the_loss(runs, backend):
    _needs(backend)
    with open(runs / f"train_{backend}.json") as f:
        history = json.load(f)
    for name in ("ssdlite", "segmentation"):
        losses = history[name]
        assert all(np.isfinite(losses)), (name, losses)
        assert losses[-1] < 0.9 * losses[0], (name, losses)
    assert history["mean_iou"][-1] > history["mean_iou"][0]


@pytest.mark.slow
@pytest.mark.parametrize("saved_on,loaded_on", [("tensorflow", "jax"), ("tensorflow", "torch"),
                                                ("jax", "tensorflow"), ("torch", "tensorflow"),
                                                ("jax", "torch")])
def test_keras_file_saved_on_one_backend_loads_on_another(runs, saved_on, loaded_on):
    _needs(saved_on)
    _needs(loaded_on)
    path = runs / f"cross_{loaded_on}_{saved_on}.npz"
    saved = np.load(runs / f"trained_{saved_on}.npz")
    loaded = np.load(path)
    for key in saved:
        _assert_close(loaded[key], saved[key], f"{key}: saved on {saved_on}, run on {loaded_on}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_decoding_and_nms_match_tensorflow(runs, backend):
    _needs(backend)
    reference = np.load(runs / "decode_tensorflow.npz")
    other = np.load(runs / f"decode_{backend}.npz")
    for key in reference:
        if key.endswith(("classes", "num_detections")):
            np.testing.assert_array_equal(other[key], reference[key], err_msg=key)
        else:
            np.testing.assert_allclose(other[key], reference[key], atol=1e-5, err_msg=key)
    assert reference["softmax_num_detections"].min() >= 5  # enough detections to compare


def test_keras_ops_nms_matches_tensorflow_kernel():
    from keras_mnv2.detection.anchors import ssd_anchors

    anchors = ssd_anchors([5, 3, 2, 1])
    rng = np.random.RandomState(7)
    for trial in range(3):
        encodings = rng.normal(size=(2, len(anchors), 4)).astype("float32")
        logits = rng.normal(scale=2.0 + trial, size=(2, len(anchors), 4)).astype("float32")
        for mode, threshold in (("softmax", 0.2), ("focal", 0.5)):
            kwargs = dict(score_threshold=threshold, max_detections=15,
                          max_detections_per_class=6, mode=mode)
            tf_side = decode_detections(encodings, logits, anchors, nms="tensorflow", **kwargs)
            ops_side = decode_detections(encodings, logits, anchors, nms="keras", **kwargs)
            assert int(np.min(tf_side["num_detections"])) >= 3
            for key in tf_side:
                np.testing.assert_allclose(np.asarray(ops_side[key]), np.asarray(tf_side[key]),
                                           atol=1e-6, err_msg=f"{mode} {key}")


def test_keras_ops_nms_suppresses_overlaps_per_class():
    # Boxes 0 and 1 overlap (IoU .81), box 2 is apart. One class: box 1 goes; two classes: the
    # second class may keep box 1 (NMS is per class).
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.45, 0.5], [0.6, 0.6, 0.9, 0.9]]],
                     "float32")
    scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.3, 0.05]]], "float32")
    out_boxes, out_scores, classes, count = (np.asarray(v) for v in class_wise_nms(
        boxes, scores, max_detections_per_class=3, max_detections=5, iou_threshold=0.6,
        score_threshold=0.2))
    assert int(count[0]) == 3
    np.testing.assert_allclose(out_scores[0], [0.9, 0.7, 0.3, 0, 0], atol=1e-7)
    np.testing.assert_array_equal(classes[0, :3], [0, 1, 0])
    np.testing.assert_allclose(out_boxes[0, :3], boxes[0, [0, 1, 2]])
    np.testing.assert_array_equal(out_boxes[0, 3:], 0)


def test_cli_backend_flag_is_set_before_keras_and_export_stays_on_tensorflow(monkeypatch):
    import keras

    from pipelines import cli

    # Keras is already imported here (on its backend): asking for another must fail clearly.
    current = keras.backend.backend()
    monkeypatch.setenv("KERAS_BACKEND", current)  # restored afterwards, whatever select_backend sets
    other = "jax" if current != "jax" else "torch"
    with pytest.raises(ValueError, match=f"already imported with the {current} backend"):
        cli.select_backend(["train", "coco", "--backend", other])
    assert cli.select_backend(["train", "coco", "--backend", current]) == current
    if current == "tensorflow":
        assert cli.select_backend(["export", "coco", "--backend", "tensorflow"]) == "tensorflow"
        assert os.environ["KERAS_BACKEND"] == "tensorflow"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "coco", "--backend", "theano"])
