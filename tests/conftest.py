import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


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
