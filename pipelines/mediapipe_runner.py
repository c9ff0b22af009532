"""Runs .tflite files in MediaPipe Tasks and in ai_edge_litert on the same images; prints JSON.

A standalone script for the MediaPipe environment (``make mediapipe-venv``: mediapipe 1.2.x
needs absl-py 2, which tensorflow-model-optimization's pin keeps out of the main environment).
It imports only numpy, Pillow, mediapipe and ai_edge_litert, never keras_mnv2:

    .venv-mediapipe/bin/python pipelines/mediapipe_runner.py REQUEST.json

REQUEST: {"models": [{"path", "kind": classifier|detector|segmenter, "litert": bool}],
"images": [paths], "out_dir": where segmentation masks go (.npy), "schema": bool (also dump
each model's metadata through the schema's generated reader)}. Images are fed as they are
(RGB uint8; give them at the model's input size to compare runtimes pixel for pixel).
Prints {"versions": {...}, "results": [per model: {"path", "mediapipe": [per image],
"litert": [per image], "metadata": {...}}]}.
"""

import json
import os
import sys

import numpy as np


def _image(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), np.uint8))


def _mp_image(array):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=array)


def _zipped_labels(path):
    """The label list zipped onto the model (MediaPipe's detector results carry the name only,
    the index is None when the model has labels)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".txt")]
            return archive.read(names[0]).decode("utf-8").splitlines() if names else []
    except zipfile.BadZipFile:
        return []


def _categories(categories, labels=()):
    out = []
    for c in categories:
        index = c.index
        if index is None and c.category_name in labels:
            index = list(labels).index(c.category_name)
        out.append({"index": None if index is None else int(index),
                    "name": c.category_name or "", "score": float(c.score)})
    return out


def run_mediapipe(path, kind, images, out_dir):
    from mediapipe.tasks.python import BaseOptions, vision

    base = BaseOptions(model_asset_path=path)
    labels = _zipped_labels(path)
    results = []
    if kind == "classifier":
        options = vision.ImageClassifierOptions(base_options=base, max_results=-1)
        with vision.ImageClassifier.create_from_options(options) as task:
            for array in images:
                found = task.classify(_mp_image(array))
                results.append({"categories": _categories(found.classifications[0].categories,
                                                          labels)})
    elif kind == "detector":
        options = vision.ObjectDetectorOptions(base_options=base, max_results=-1,
                                               score_threshold=0.0)
        with vision.ObjectDetector.create_from_options(options) as task:
            for array in images:
                found = task.detect(_mp_image(array))
                results.append({"detections": [
                    {"box": [int(d.bounding_box.origin_x), int(d.bounding_box.origin_y),
                             int(d.bounding_box.width), int(d.bounding_box.height)],
                     **_categories(d.categories, labels)[0]} for d in found.detections]})
    elif kind == "segmenter":
        options = vision.ImageSegmenterOptions(base_options=base, output_category_mask=True,
                                               output_confidence_masks=False)
        with vision.ImageSegmenter.create_from_options(options) as task:
            labels = list(task.labels)
            for i, array in enumerate(images):
                found = task.segment(_mp_image(array))
                mask = np.asarray(found.category_mask.numpy_view()).copy()
                name = os.path.join(out_dir, f"{os.path.basename(path)}.{i}.mediapipe.npy")
                np.save(name, mask)
                results.append({"mask": name, "labels": labels})
    else:
        raise ValueError(f"kind must be classifier, detector or segmenter, got {kind!r}")
    return results


def run_litert(path, images, out_dir):
    """The signature's outputs per image, the input made from the pixels as the metadata says
    (float: (x - 127.5) / 127.5; uint8: as they are), outputs dequantized."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    runner = interp.get_signature_runner()
    (name, detail), = runner.get_input_details().items()
    outputs = runner.get_output_details()
    results = []
    for i, array in enumerate(images):
        if detail["dtype"] == np.float32:
            x = (array.astype(np.float32) - 127.5) / 127.5
        elif detail["dtype"] == np.uint8:
            x = array
        else:
            raise ValueError(f"{path}: input type {np.dtype(detail['dtype']).name}")
        got = runner(**{name: x[None].astype(detail["dtype"])})
        entry = {}
        for key, value in got.items():
            scale, zero_point = outputs[key]["quantization"]
            value = np.asarray(value)
            if value.dtype in (np.int8, np.uint8) and scale:
                value = (value.astype(np.float32) - zero_point) * scale
            value = value[0]
            if value.size > 4096:  # masks and logits maps go to a file
                file = os.path.join(out_dir, f"{os.path.basename(path)}.{i}.{key}.npy")
                np.save(file, value)
                entry[key] = {"npy": file}
            else:
                entry[key] = value.tolist()
        results.append(entry)
    return results


def _plain(value):
    """A generated object-API value as plain JSON (tables -> dicts without None fields)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items() if v is not None}
    return value


def read_schema(path):
    """The model's metadata read by the schema's generated reader (mediapipe's
    metadata_schema_py_generated), and the names of the files zipped onto it."""
    import zipfile

    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema_fb
    from mediapipe.tasks.metadata import schema_py_generated as model_fb

    with open(path, "rb") as f:
        content = f.read()
    model = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAsModel(content, 0))
    buffer = None
    for item in model.metadata or []:
        if item.name in (b"TFLITE_METADATA", "TFLITE_METADATA"):
            buffer = bytes(np.asarray(model.buffers[item.buffer].data, np.uint8))
    if buffer is None:
        return {"metadata": None, "files": []}
    if not schema_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0):
        raise ValueError(f"{path}: the metadata buffer lacks the M001 identifier")
    metadata = schema_fb.ModelMetadataT.InitFromObj(
        schema_fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    with zipfile.ZipFile(path) as archive:
        files = archive.namelist()
    return {"metadata": _plain(metadata), "files": files}


def versions():
    import importlib.metadata as md

    return {name: md.version(name) for name in ("mediapipe", "ai-edge-litert", "numpy")}


def main(argv):
    with open(argv[1]) as f:
        request = json.load(f)
    images = [_image(p) for p in request["images"]]
    out_dir = request.get("out_dir") or "."
    results = []
    for model in request["models"]:
        entry = {"path": model["path"]}
        try:
            entry["mediapipe"] = run_mediapipe(model["path"], model["kind"], images, out_dir)
        except Exception as err:  # reported per model, so one refusal does not hide the rest
            entry["mediapipe_error"] = f"{type(err).__name__}: {err}"
        if model.get("litert", True):
            entry["litert"] = run_litert(model["path"], images, out_dir)
        if request.get("schema"):
            entry["schema"] = read_schema(model["path"])
        results.append(entry)
    json.dump({"versions": versions(), "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
