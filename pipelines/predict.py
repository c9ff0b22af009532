"""``keras-mnv2 predict <job> --model FILE IMAGE...``: a trained (.keras) or converted (.tflite)
model on image files (or folders of them), one annotated PNG per image and one JSON of the
results. ``keras-mnv2 predict --preset NAME IMAGE...``: an official model by name (or a local
official file, ``keras_mnv2.presets``), named with its own class names.

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

from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.inference import load_image
from keras_mnv2.inference import model_input as _model_input
from keras_mnv2.inference import softmax as _softmax
from keras_mnv2.inference import top as _top
from keras_mnv2.labels import name as _name

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
        # MPLBACKEND: a Jupyter kernel sets its inline backend, which that environment lacks.
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
        return subprocess.run([python, str(RUNNER), f.name], capture_output=True, text=True,
                              timeout=timeout, env=env)
    finally:
        os.remove(f.name)


# ----------------------------------------------------------------------------------------------
# Labels, images, models


def run_labels(job, run_dir):
    """The class names of a training run (metrics.json and its dataset), or None. One per
    class column of the model's output (the detector's background first)."""
    path = Path(run_dir or f"runs/{job}") / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("class_names"):
        return list(metrics["class_names"])
    dataset = metrics.get("dataset")
    if not dataset or not os.path.isdir(dataset):
        return None
    try:
        if job == "coco":
            from pipelines.data import coco

            return list(coco.load_coco(dataset, "train").label_names)
        if job == "imagenet":
            from pipelines.jobs import classification

            return list(classification.sources(data_dir=dataset)[0].class_names)
    except (OSError, ValueError):
        return None
    return None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(paths):
    """The image files of ``paths``: files as given, folders as their image files (sorted)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(str(p) for p in Path(path).iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise InputError(f"{path}: a folder with no image file "
                                 f"({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        else:
            found.append(str(path))
    return found


class KerasRunner:
    """A Keras model (a .keras file, or a model already loaded: a preset) through
    ``keras_mnv2.predict``: its own class names first (else the run's), a detector decoded with
    its own anchors."""

    def __init__(self, job, path, labels, min_score, model=None):
        from keras_mnv2.deploy import qat
        from keras_mnv2.inference import task
        from keras_mnv2.labels import model_labels

        self.model = model if model is not None else qat.load_keras_model(path)
        self.kind, self.min_score = KIND[job] if job else task(self.model), min_score
        shape = self.model.input_shape[1:3]
        if None in shape:
            raise InputError(f"{path} has no static input size {tuple(shape)}: export it at a "
                             "fixed size, or predict with its .tflite file")
        self.labels = model_labels(self.model) or labels

    def __call__(self, pixels):
        from keras_mnv2.inference import predict as run

        return run(self.model, pixels, min_score=self.min_score, labels=self.labels)


class LiteRTRunner:
    """A .tflite file in ai_edge_litert (its metadata's labels first, then the run's)."""

    def __init__(self, job, path, labels, min_score):
        from keras_mnv2.deploy import metadata, tflite

        self.kind, self.min_score, self.path = KIND[job], min_score, path
        interp = tflite.interpreter(path)
        (_, detail), = interp.get_signature_runner().get_input_details().items()
        self.size = tuple(int(s) for s in detail["shape"][1:3])
        self.outputs = set(interp.get_signature_runner().get_output_details())
        embedded = metadata.labels(path)
        if embedded is not None and self.kind == "detector":
            embedded = ["background"] + embedded  # the metadata leaves background out
        self.labels = embedded or labels
        if self.kind == "detector" and "detection_boxes" not in self.outputs:
            raise InputError(f"{path} has outputs {sorted(self.outputs)}: predict draws the "
                             "post-processed detections (export output='detections'; the "
                             "'tasks' export runs with --runtime mediapipe)")

    def __call__(self, pixels):
        from keras_mnv2.deploy import tflite

        out = {k: v[0] for k, v in tflite.run_signature(
            self.path, _model_input(pixels, self.size)).items()}
        h, w = pixels.shape[:2]
        if self.kind == "classifier":
            (name, scores), = out.items()
            if name != "probabilities":
                scores = _softmax(scores)
            return {"top5": _top(scores, self.labels)}
        if self.kind == "detector":
            n = int(np.ravel(out["num_detections"])[0])
            found = []
            for box, score, cls in zip(out["detection_boxes"][:n], out["detection_scores"][:n],
                                       out["detection_classes"][:n]):
                if score < self.min_score:
                    continue
                ymin, xmin, ymax, xmax = np.clip(box, 0, 1)
                found.append({"box": [float(xmin * w), float(ymin * h), float(xmax * w),
                                      float(ymax * h)],
                              "index": int(cls), "name": _name(self.labels, int(cls) + 1),
                              "score": float(score)})
            return {"detections": found}
        value = out["mask"] if "mask" in out else next(iter(out.values())).argmax(-1)
        return {"mask": np.asarray(value).astype(np.uint8)}


def _mediapipe_results(job, path, images, min_score, work):
    """MediaPipe Tasks results for every image (its own preprocessing, from the metadata)."""
    from keras_mnv2.deploy import metadata

    kind = KIND[job]
    description, _ = metadata.read_description(path)
    logits = description is not None and any(
        t.get("name") == "logits" for g in description.get("subgraph_metadata", [])
        for t in g.get("output_tensor_metadata", []))
    out = run_mediapipe([(path, kind)], images, work, litert=False)
    result = out["results"][0]
    if "mediapipe_error" in result:
        raise RuntimeError(f"MediaPipe Tasks refuses {path}: {result['mediapipe_error']}")
    converted = []
    for got in result["mediapipe"]:
        if kind == "classifier":
            categories = got["categories"]  # all of them (max_results=-1), best first
            if logits:  # a logits export: MediaPipe reports the logits as scores
                probabilities = _softmax([c["score"] for c in categories])
                categories = [dict(c, score=float(p)) for c, p in zip(categories, probabilities)]
            converted.append({"top5": categories[:5]})
        elif kind == "detector":
            converted.append({"detections": [
                {"box": [d["box"][0], d["box"][1], d["box"][0] + d["box"][2],
                         d["box"][1] + d["box"][3]], "index": d["index"], "name": d["name"],
                 "score": d["score"]} for d in got["detections"] if d["score"] >= min_score]})
        else:
            mask = np.load(got["mask"])  # [H, W, 1] at the image's size
            converted.append({"mask": mask.reshape(mask.shape[:2]), "labels": got["labels"]})
    return converted, out["versions"]


# ----------------------------------------------------------------------------------------------
# Drawing


def palette(n):
    """``n`` distinct RGB colours (class 0, background, black)."""
    import colorsys

    colours = [(0, 0, 0)]
    for i in range(1, max(n, 1)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0)
        colours.append((int(255 * r), int(255 * g), int(255 * b)))
    return np.asarray(colours[:max(n, 1)], np.uint8)


def draw(pixels, result, kind, labels=None):
    """The annotated image (PIL): top-5 names, boxes with names and scores, or the coloured
    class map over the photo with a legend."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(pixels).convert("RGB")
    if kind == "segmenter":
        mask = np.asarray(result["mask"])
        n = int(max(mask.max() + 1, len(labels or ())))
        colours = palette(n)
        overlay = Image.fromarray(colours[mask]).resize(image.size, Image.NEAREST)
        blend = np.where((np.asarray(overlay).sum(-1, keepdims=True) > 0),
                         0.45 * np.asarray(image) + 0.55 * np.asarray(overlay),
                         np.asarray(image))
        image = Image.fromarray(blend.astype(np.uint8))
        pen = ImageDraw.Draw(image)
        y = 4
        for c in np.unique(mask):
            if c == 0:
                continue
            pen.rectangle([4, y, 16, y + 10], fill=tuple(int(v) for v in colours[c]))
            pen.text((20, y - 1), _name(labels, int(c)), fill=(255, 255, 255))
            y += 14
        return image
    pen = ImageDraw.Draw(image)
    if kind == "classifier":
        lines = [f"{c['name']}: {c['score']:.2f}" for c in result["top5"]]
        width = max(pen.textlength(line) for line in lines) + 8
        pen.rectangle([0, 0, width, 4 + 12 * len(lines)], fill=(0, 0, 0))
        for i, line in enumerate(lines):
            pen.text((4, 2 + 12 * i), line, fill=(255, 255, 0) if i == 0 else (255, 255, 255))
        return image
    colours = palette(max([d["index"] for d in result["detections"]] + [0]) + 2)
    for d in result["detections"]:
        colour = tuple(int(v) for v in colours[(d["index"] or 0) + 1])
        xmin, ymin, xmax, ymax = d["box"]
        pen.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=2)
        text = f"{d['name']} {d['score']:.2f}"
        pen.rectangle([xmin, max(ymin - 12, 0), xmin + pen.textlength(text) + 4,
                       max(ymin - 12, 0) + 12], fill=colour)
        pen.text((xmin + 2, max(ymin - 12, 0)), text, fill=(0, 0, 0))
    return image


# ----------------------------------------------------------------------------------------------
# The command


def predict(job, model, images, out_dir=None, runtime="litert", run_dir=None, min_score=0.3):
    """Runs ``model`` (.keras or .tflite) of ``job`` on ``images``; writes ``out_dir/<image
    name>.png`` (annotated) and ``out_dir/predictions.json``; returns the JSON's dict.
    ``images``: files, or folders of them."""
    if job not in KIND:
        raise InputError(f"job must be one of {tuple(KIND)}, got {job!r}")
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if not images:
        raise InputError("give at least one image file")
    if not os.path.exists(model):
        raise MissingFileError(f"model not found: {model}")
    suffix = Path(model).suffix
    if suffix not in (".keras", ".tflite"):
        raise InputError(f"--model must be a .keras or a .tflite file, got {model}")
    if suffix == ".keras" and runtime == "mediapipe":
        raise InputError("MediaPipe Tasks runs .tflite files: export the model first "
                         f"(keras-mnv2 export {job})")
    images = image_files(images)
    pixels = [load_image(p) for p in images]
    run_dir = run_dir or f"runs/{job}"
    out_dir = Path(out_dir or Path(run_dir) / "predict")
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = KIND[job]
    labels = run_labels(job, run_dir)
    versions = None
    if runtime == "mediapipe":
        from keras_mnv2.deploy import metadata

        embedded = metadata.labels(model)
        if embedded is not None and kind == "detector":
            embedded = ["background"] + embedded
        labels = embedded or labels
        with tempfile.TemporaryDirectory() as work:
            results, versions = _mediapipe_results(job, model, images, min_score, work)
    else:
        runner = (KerasRunner if suffix == ".keras" else LiteRTRunner)(job, model, labels,
                                                                     min_score)
        labels = runner.labels
        results = [runner(p) for p in pixels]
    report = {"job": job, "model": str(model), "runtime": runtime if suffix == ".tflite"
              else "keras", "min_score": min_score}
    if versions:
        report["versions"] = versions
    return write_results(report, kind, images, pixels, results, labels, out_dir)


def write_results(report, kind, images, pixels, results, labels, out_dir):
    """Draws each image's result into ``out_dir/<image name>.png``, adds one entry per image to
    ``report`` ("results") and writes it to ``out_dir/predictions.json``; returns it."""
    from pipelines.manifest import write_atomic

    entries = []
    used = set()
    for path, image, result in zip(images, pixels, results):
        stem = Path(path).stem
        while stem in used:  # two images of one name from different folders
            stem += "_"
        used.add(stem)
        png = out_dir / f"{stem}.png"
        tmp = png.with_suffix(".tmp.png")
        draw(image, result, kind, result.get("labels") or labels).save(tmp)
        os.replace(tmp, png)
        entry = {"image": str(path), "annotated": str(png)}
        if kind == "segmenter":
            mask = np.asarray(result["mask"])
            names = result.get("labels") or labels
            entry["classes"] = {_name(names, int(c)): round(float(np.mean(mask == c)), 4)
                                for c in np.unique(mask)}
        else:
            entry.update({k: v for k, v in result.items()})
        entries.append(entry)
    report["results"] = entries
    write_atomic(out_dir / "predictions.json", json.dumps(report, indent=1))
    return report


def predict_preset(preset, images, out_dir=None, min_score=0.3):
    """``keras-mnv2 predict --preset NAME IMAGE...``: a preset (a name of
    ``keras_mnv2.presets()`` or a local file or folder, ``keras_mnv2.presets.load``) on image
    files and folders, in Keras, named with the model's own class names; writes the PNGs and
    the JSON into ``out_dir`` (default ``runs/<preset>/predict``) and returns the JSON's dict."""
    from keras_mnv2 import presets

    images = image_files(images)
    if not images:
        raise InputError("give at least one image file or folder")
    model = presets.load(preset)
    out_dir = Path(out_dir or Path("runs") / presets.short_name(preset) / "predict")
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = KerasRunner(None, preset, None, min_score, model=model)
    pixels = [load_image(p) for p in images]
    results = [runner(p) for p in pixels]
    report = {"preset": str(preset), "model": model.name, "runtime": "keras",
              "min_score": min_score}
    return write_results(report, runner.kind, images, pixels, results, runner.labels, out_dir)


def main(args):
    """``keras-mnv2 predict``."""
    try:
        if getattr(args, "preset", None) is not None:
            report = predict_preset(args.preset, args.images, out_dir=args.out_dir,
                                    min_score=args.min_score)
        else:
            report = predict(args.job, args.model, args.images, out_dir=args.out_dir,
                             runtime=args.runtime, run_dir=args.run_dir,
                             min_score=args.min_score)
    except RuntimeError as err:  # MediaPipe missing or refusing the file
        print(f"keras-mnv2: error: {err}", file=sys.stderr)
        return 2
    for entry in report["results"]:
        if "top5" in entry:
            what = ", ".join(f"{c['name']} {c['score']:.2f}" for c in entry["top5"])
        elif "detections" in entry:
            what = f"{len(entry['detections'])} boxes: " + ", ".join(
                f"{d['name']} {d['score']:.2f}" for d in entry["detections"][:5])
        else:
            what = ", ".join(f"{k} {v:.0%}" for k, v in entry["classes"].items())
        print(f"{entry['image']} -> {entry['annotated']}: {what}")
    print(f"results: {Path(report['results'][0]['annotated']).parent / 'predictions.json'}")
    return 0
