"""``keras-mnv2 predict <job> --model FILE IMAGE...``: a trained (.keras) or converted (.tflite)
model on image files, one annotated PNG per image and one JSON of the results.

Runtimes: Keras for .keras files; for .tflite files LiteRT (``ai_edge_litert``, in process) or
MediaPipe Tasks (ImageClassifier / ObjectDetector / ImageSegmenter, which read the file's TFLite
metadata: ``keras_mnv2.deploy.metadata``). MediaPipe 1.2.x cannot share the main environment
(it needs absl-py 2; tensorflow-model-optimization pins 1.x), so it runs in its own
environment (``make mediapipe-venv``, ``.venv-mediapipe``) through
``pipelines/mediapipe_runner.py``; ``KERAS_MNV2_MEDIAPIPE_PYTHON`` names another interpreter.

Images are resized to the model input (a stretch, as the training pipelines' eval resize) for
Keras and LiteRT; MediaPipe does its own preprocessing from the metadata. What is drawn:
classifier: the top-5 names and scores; detector: the boxes with names and scores (score >=
``--min-score``); segmenter: the class map in colours over the photo, with a legend.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUNTIMES = ("litert", "mediapipe")
KIND = {"imagenet": "classifier", "coco": "detector", "voc": "segmenter"}
MEDIAPIPE_ENV = ".venv-mediapipe"
RUNNER = Path(__file__).with_name("mediapipe_runner.py")


# ----------------------------------------------------------------------------------------------
# MediaPipe in its own environment


def mediapipe_python():
    """The interpreter of the MediaPipe environment, or None: ``KERAS_MNV2_MEDIAPIPE_PYTHON``,
    else ``.venv-mediapipe/bin/python`` in the working directory or the repository root."""
    given = os.environ.get("KERAS_MNV2_MEDIAPIPE_PYTHON")
    if given:
        return given if os.path.exists(given) else None
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / MEDIAPIPE_ENV / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return None


def run_mediapipe(models, images, out_dir, schema=False, litert=True, timeout=600):
    """Runs ``models`` ([(path, kind)]) on ``images`` (file paths) in MediaPipe Tasks (and in
    LiteRT, in the same process, with ``litert``) in the MediaPipe environment; returns the
    runner's JSON ({"versions", "results"}). Raises RuntimeError naming what is missing."""
    python = mediapipe_python()
    if python is None:
        raise RuntimeError(f"no MediaPipe environment: run `make mediapipe-venv` (creates "
                           f"{MEDIAPIPE_ENV}) or set KERAS_MNV2_MEDIAPIPE_PYTHON")
    os.makedirs(out_dir, exist_ok=True)
    models = [{"path": os.path.abspath(p), "kind": k, "litert": litert} for p, k in models]
    request = {"images": [os.path.abspath(p) for p in images],
               "out_dir": os.path.abspath(out_dir), "schema": schema}
    done = _run_runner(python, dict(request, models=models), timeout)
    if done.returncode == 0:
        return json.loads(done.stdout)
    # MediaPipe aborts the process on some bad models (a failed CHECK): one model at a time,
    # so that the abort is reported for the model that caused it
    out = {"versions": None, "results": []}
    for model in models:
        done = _run_runner(python, dict(request, models=[model]), timeout)
        if done.returncode == 0:
            one = json.loads(done.stdout)
            out["versions"] = one["versions"]
            out["results"] += one["results"]
        else:
            lines = [line for line in done.stderr.splitlines()
                     if line.startswith(("F0", "E0")) or "Error" in line]
            out["results"].append({"path": model["path"], "mediapipe_error": (
                f"the process ended with code {done.returncode}: "
                + ("\n".join(lines[-5:]) or done.stderr[-1000:]))})
    return out


def _run_runner(python, request, timeout):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(request, f)
    try:
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
        return subprocess.run([python, str(RUNNER), f.name], capture_output=True, text=True,
                              timeout=timeout, env=env)
    finally:
        os.remove(f.name)
