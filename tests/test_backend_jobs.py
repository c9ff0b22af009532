"""The COCO and VOC jobs on JAX and torch: ``keras-mnv2 train coco|voc --backend jax|torch``
trains from the tf.data pipelines, evaluates (AP50 by pycocotools, mean IoU), and its last.keras
loads on TensorFlow with the same outputs.

Each run is the command itself (``pipelines.cli.main``, through ``tests/backends_worker.py job``,
which then reloads last.keras on the training backend and keeps its outputs on fixed images) in a
subprocess: KERAS_BACKEND is fixed when Keras is imported. The runs are tiny (the embedded
recipe at 64 px, batch 8, 2 epochs, on small sets made by the embedded data generators): a check
that the jobs run and learn on each backend, not a trained model. torch is an optional extra;
its runs are skipped, saying so, where it is not installed (as in tests/test_backends.py).
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "backends_worker.py")
METRIC = {"coco": "AP50", "voc": "mean_iou"}


def _needs(backend):
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install -e '.[{backend}]', or make "
                    "test-torch; see docs/backends.md)")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Small COCO- and VOC-format sets from the embedded data generators: 64 + 16 images of 2
    classes (large objects, no crowds: the set tests/test_detection_job.py learns on) and 32 + 4
    images of 3 shapes."""
    from pipelines.synthetic import coco as synthetic_coco
    from pipelines.synthetic import voc as synthetic_voc

    root = tmp_path_factory.mktemp("backend_jobs_data")
    synthetic_coco.generate(root / "coco", num_train=64, num_val=16, image_size=128,
                            num_classes=2, min_scale=0.3, max_objects=3, crowd_fraction=0.0)
    synthetic_voc.generate(root / "voc", num_train=32, num_val=4, image_size=64, num_classes=3)
    return root


def _train(job, backend, data_root, run_dir):
    """``keras-mnv2 train JOB --backend BACKEND`` on the small set; its exit status 0."""
    data = (["--coco-dir", str(data_root / "coco"), "--input-size", "64"] if job == "coco"
            else ["--voc-dir", str(data_root / "voc"), "--crop-size", "64", "--eval-size", "64"])
    args = ["train", job, "--backend", backend, *data, "--recipe", "embedded", "--batch-size",
            "8", "--epochs", "2", "--run-dir", str(run_dir)]
    # KERAS_BACKEND too: the worker imports Keras before the command reads --backend (which
    # refuses a Keras imported on another backend)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")]
                                                    if p]))
    if backend == "torch":
        # torch on one thread: with two, on the 2 shared cores (pytest's two workers, other
        # work), these runs trained 0.74 (COCO) and 0.3 (VOC) images/s against 10.4 and 2.9 with
        # one (torch's OpenMP threads wait on each other)
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, WORKER, "job", str(run_dir), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (f"keras-mnv2 {' '.join(args)} exited {done.returncode}:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def _losses(run_dir):
    with open(run_dir / "history.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize("job", ("coco", "voc"))
@pytest.mark.parametrize("backend", ("jax", "torch"))
def test_job_trains_and_evaluates_on_backend(datasets, tmp_path, job, backend):
    _needs(backend)
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("reloads each run's last.keras on TensorFlow: run on the TensorFlow backend")
    run_dir = tmp_path / "run"
    _train(job, backend, datasets, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    value = metrics[METRIC[job]]
    print(f"{job} on {backend}: {METRIC[job]} {value}, loss {_losses(run_dir)}, "
          f"{metrics['train_images_per_second']} images/s")
    assert isinstance(value, float) and 0.0 <= value <= 1.0, (METRIC[job], value)
    assert metrics["stopped_on_nan"] is None
    losses = _losses(run_dir)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    # Early training falls fast: the epoch means fell 11-14% (COCO) and 33-37% (VOC) in the
    # runs that set this test up, on both backends.
    assert losses[-1] < losses[0], losses

    # The .keras file written on JAX or torch loads on TensorFlow (this process) and gives the
    # outputs it gave on its own backend: within 1e-4 of each output's largest magnitude
    # (TensorFlow's convolution kernels differ from JAX's and torch's by up to 3e-5 of it on
    # MobileNetV2, tests/test_backends.py; elementwise relative error means nothing near zero).
    model = keras.saving.load_model(run_dir / "last.keras", compile=False)
    reloaded = np.load(run_dir / f"reloaded_{backend}.npz")
    outputs = model.predict(reloaded["x"], verbose=0)
    outputs = outputs if isinstance(outputs, dict) else {"output": outputs}
    assert set(outputs) == set(reloaded) - {"x"}
    for key, value in outputs.items():
        expected = reloaded[key]
        assert np.std(expected) > 1e-3, f"a constant {key} would prove nothing"
        np.testing.assert_allclose(np.asarray(value), expected, rtol=0,
                                   atol=1e-4 * float(np.max(np.abs(expected))), err_msg=key)


@pytest.mark.parametrize("backend", ("jax", "torch"))
def test_tf_distribute_strategy_is_refused_on_other_backends(datasets, tmp_path, backend):
    _needs(backend)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "voc", "--backend", backend,
         "--voc-dir", str(datasets / "voc"), "--strategy", "mirrored",
         "--run-dir", str(tmp_path / "run")], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"needs the TensorFlow backend (tf.distribute); Keras runs on {backend}" in done.stderr
    assert not (tmp_path / "run" / "recipe.json").exists()  # refused before anything was made
