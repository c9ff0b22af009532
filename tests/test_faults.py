"""Nothing lost, nothing silent (issue 14): kills, bad data, bad files and bad arguments each end
in a resumed run, a skip that is counted, or one clear line naming the problem."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines import cli
from pipelines.jobs import driver
from tests.test_classification import make_tiny_imagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, env=None, timeout=600):
    """The real ``keras-mnv2`` command in a fresh process; (return code, stdout, stderr)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    return done.returncode, done.stdout, done.stderr


def _history_epochs(run_dir):
    """The epoch column of history.csv as written (no de-duplication)."""
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _tiny_imagenet_args(data_dir, run_dir, epochs):
    return ["train", "imagenet", "--data-dir", data_dir, "--run-dir", run_dir, "--alpha", "0.35",
            "--resolution", "32", "--batch-size", "4", "--epochs", epochs,
            "--steps-per-epoch", "3", "--shuffle-buffer", "16", "--weight-decay", "0",
            "--use-ema", "false"]


# ----------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_sigkill_at_each_moment_then_rerun_resumes(tmp_path):
    """A real training process SIGKILLed mid-epoch and while history.csv, last.keras and the
    resume state are being written; the same command rerun each time. No epoch is lost or
    repeated in history.csv, the state never breaks, and the final models load."""
    import keras

    data_dir = make_tiny_imagenet(tmp_path / "data")
    run_dir = str(tmp_path / "run")
    args = _tiny_imagenet_args(data_dir, run_dir, 4)
    # (kill point, epochs the run holds after the kill)
    for point, done in (("batch@1", 1), ("history@1", 1), ("checkpoint@1", 1),
                        ("state-weights@2", 2), ("state@2", 2)):
        code, out, err = _cli(*args, env={driver.KILL_AT_ENV: point})
        assert code == -9, (point, code, err[-2000:])
        state = driver.ResumeState(os.path.join(run_dir, "backup"), run_dir)
        assert state.epochs_done() == done, point
        # the history may hold the row of the epoch being killed; the rerun cuts it
        assert _history_epochs(run_dir)[:done] == list(range(done)), point
        if point.startswith("checkpoint"):  # the old last.keras is intact, the new one not in
            assert any(n.startswith(".last.tmp") for n in os.listdir(run_dir))
            keras.saving.load_model(os.path.join(run_dir, "last.keras"), compile=False)
    code, out, err = _cli(*args)
    assert code == 0, err[-3000:]
    assert _history_epochs(run_dir) == [0, 1, 2, 3]  # each epoch once, in order
    for name in ("last.keras", "model.keras"):
        model = keras.saving.load_model(os.path.join(run_dir, name), compile=False)
        assert model.output_shape == (None, 3)
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    assert metrics["train_images"] == 15 and metrics["train_images_listed"] == 16
    assert not [n for n in os.listdir(run_dir) if ".tmp" in n and n != ".last.tmp.keras"]
