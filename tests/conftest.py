import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (Python, NumPy and the Keras backend), so
    a test's outcome does not depend on which tests ran before it in the process."""
    import keras

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
