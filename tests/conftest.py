import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # first: on KERAS_BACKEND=torch, importing torch after TensorFlow segfaulted here
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (Python, NumPy and the Keras backend), so
    a test's outcome does not depend on which tests ran before it in the process."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def offline_keras_home(tmp_path, monkeypatch):
    """An empty Keras cache directory, so nothing cached by hand can make a test pass."""
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def images():
    def make(n=2, size=96, seed=0):
        return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")

    return make


def _find_real_dir():
    """The real reference files (official models, photos): $KERAS_MNV2_REAL, else the first
    ``shared/reference/real`` above the repository (``../shared`` from a checkout)."""
    if os.environ.get("KERAS_MNV2_REAL"):
        return os.environ["KERAS_MNV2_REAL"]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    while True:
        candidate = os.path.join(here, "shared", "reference", "real")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


@pytest.fixture(scope="session")
def real_dir():
    """The directory of the real reference files; skips the test (saying why) without it."""
    found = _find_real_dir()
    if found is None or not os.path.isdir(found):
        pytest.skip("no shared/reference/real directory above the repository (and "
                    "$KERAS_MNV2_REAL unset): the official models and real photos are absent")
    return found


# Tests that need the TensorFlow backend by their nature, skipped (with the reason) when
# KERAS_BACKEND is jax or torch: "file.py" (the whole file) or "file.py::test_name" (one test,
# all its parameters). The library layer itself runs on the three backends; docs/backends.md
# lists these groups.
_TFLITE = ("TFLite conversion takes TF graphs (tf.lite.TFLiteConverter traces a TF function "
           "of the Keras model), so it needs the TensorFlow backend")
_TFMOT = "TFMOT QAT works on tf_keras twins built from the TensorFlow-backend model"
_KERAS_QAT = ("the Keras 3 QAT lowers its fake quantization to TF ops for the TFLite converter "
              "(TensorFlow backend)")
TF_ONLY = {
    "test_tflite.py": _TFLITE,
    "test_export.py": _TFLITE,
    "test_export_model.py": _TFLITE,
    "test_metadata.py": _TFLITE + " (metadata goes into exported .tflite files)",
    "test_predict.py": _TFLITE + " (the fixture exports a .tflite file)",
    "test_benchmarks.py": _TFLITE + " (latency of .tflite files)",
    "test_memory.py::test_tflite_arena_hand_checked": _TFLITE,
    "test_memory.py::test_split_mobilenet_survives_tflite_conversion": _TFLITE,
    "test_memory.py::test_arena_of_a_file_and_bad_input": _TFLITE,
    "test_memory.py::test_int8_sum_of_projections_stays_close": _TFLITE,
    "test_deeplab.py::test_tflite_float_matches_keras": _TFLITE,
    "test_deeplab.py::test_align_corners_converts_to_one_tflite_resize_with_the_flag": _TFLITE,
    "test_split.py::test_export_keeps_the_split_arena": _TFLITE,
    "test_qat.py": _TFMOT,
    "test_split.py::test_qat_of_a_split_model_agrees_with_the_unsplit_one": _TFMOT,
    "test_keras_qat.py::test_quantize_rejects_bad_models": _KERAS_QAT,
    "test_keras_qat.py::test_keras_qat_converts_to_int8_and_matches_its_tflite": _KERAS_QAT,
    "test_keras_qat.py::test_litert_quantizer_int8_export": _TFLITE,
    "test_keras_qat.py::test_litert_quantizer_settings_are_checked": _TFLITE,
    "test_litert_quantizer.py": _TFLITE,
    "test_deploy.py::test_voc_export_evaluates_like_keras_and_tabulates": _TFLITE,
    "test_deploy.py::test_voc_split_export_sits_beside_the_unsplit_one": _TFLITE,
    "test_deploy.py::test_coco_qat_fine_tunes_and_exports": _TFMOT,
    "test_deploy.py::test_coco_keras_qat_job_fine_tunes_and_exports":
        _KERAS_QAT + " (and its file is compared with the TFMOT one)",
    "test_distributed.py": "tf.distribute strategies (MirroredStrategy, MultiWorkerMirrored) "
                           "exist on the TensorFlow backend only",
    "test_faults.py::test_tflite_checked_against_the_run_before_evaluating": _TFLITE,
}


def tf_only_reason(nodeid):
    """The reason a test needs the TensorFlow backend, or None."""
    path, sep, rest = nodeid.partition("::")
    name = os.path.basename(path.replace("\\", "/")) + sep + rest
    for key, reason in TF_ONLY.items():
        if name == key or name.startswith(key + "::") or name.startswith(key + "["):
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    for item in items:
        reason = tf_only_reason(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow backend only ({backend} "
                                                    f"here): {reason}"))
