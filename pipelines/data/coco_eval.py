"""COCO box AP of detections, with pycocotools' COCOeval (the official metric)."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from keras_mnv2.errors import InputError, MissingFileError

METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def _load_gt(coco_gt):
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    if hasattr(coco_gt, "coco"):  # a pipelines.data.coco.CocoIndex
        return coco_gt.coco
    path = Path(coco_gt)
    if not path.is_file():
        raise MissingFileError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def to_coco_results(coco_gt, detections, label_to_category):
    """COCO result records ([x, y, w, h] pixels, original category ids) of per-image detections.

    ``detections``: dicts with ``image_id``, ``boxes`` [K, 4] normalized (ymin, xmin, ymax, xmax),
    ``scores`` [K] and ``classes`` [K] contiguous labels; sizes come from the ground truth.
    """
    coco_gt = _load_gt(coco_gt)
    label_to_category = {int(k): int(v) for k, v in dict(label_to_category).items()}
    results = []
    for det in detections:
        image_id = int(det["image_id"])
        if image_id not in coco_gt.imgs:
            raise KeyError(f"detections for image id {image_id}, which the ground truth lacks")
        info = coco_gt.imgs[image_id]
        height, width = float(info["height"]), float(info["width"])
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        classes = np.asarray(det["classes"]).reshape(-1).astype(np.int64)
        if not len(boxes) == len(scores) == len(classes):
            raise InputError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, "
                f"{len(classes)} classes"
            )
        for (ymin, xmin, ymax, xmax), score, label in zip(boxes, scores, classes):
            if int(label) not in label_to_category:
                raise KeyError(f"image {image_id}: class {int(label)} has no category id")
            x, y = xmin * width, ymin * height
            results.append({
                "image_id": image_id,
                "category_id": label_to_category[int(label)],
                "bbox": [round(x, 3), round(y, 3),
                         round(xmax * width - x, 3), round(ymax * height - y, 3)],
                "score": round(float(score), 5),
            })
    return results


def coco_evaluate(coco_gt, detections, label_to_category, results_path=None, verbose=False):
    """COCO box AP of ``detections`` over the images they list.

    ``coco_gt`` is a pycocotools ``COCO``, a ``CocoIndex`` or an annotation file path;
    ``label_to_category`` maps contiguous labels to COCO category ids (``CocoIndex
    .label_to_category``). Images listed with no boxes count (their ground truth is missed).
    The results JSON is written to ``results_path`` when given. Returns ``METRICS`` -> float from
    ``COCOeval.stats`` (-1 where the ground truth has no object of that size); all zeros where
    there are no detections at all.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_gt(coco_gt)
    detections = list(detections)
    results = to_coco_results(coco_gt, detections, label_to_category)
    if results_path is not None:
        Path(results_path).parent.mkdir(parents=True, exist_ok=True)
        from pipelines.manifest import write_atomic

        write_atomic(results_path, json.dumps(results))
    if not results:
        return {name: 0.0 for name in METRICS}

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted({int(d["image_id"]) for d in detections})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(out.getvalue())
    return {name: float(v) for name, v in zip(METRICS, evaluator.stats[: len(METRICS)])}
