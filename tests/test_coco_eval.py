import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipelines.data import coco_eval

# Two 640 x 480 images; small (< 32^2), medium and large boxes; category ids 1, 3, 7 map to
# contiguous labels 1, 2, 3.
LABEL_TO_CATEGORY = {1: 1, 2: 3, 3: 7}
GT = {
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 640, "height": 480},
        {"id": 20, "file_name": "b.jpg", "width": 640, "height": 480},
        {"id": 30, "file_name": "c.jpg", "width": 640, "height": 480},  # no objects
    ],
    "categories": [{"id": 1, "name": "one"}, {"id": 3, "name": "three"},
                   {"id": 7, "name": "seven"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [10, 20, 20, 15]},  # small
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [100, 120, 60, 50]},  # medium
        {"id": 3, "image_id": 10, "category_id": 7, "bbox": [300, 100, 200, 250]},  # large
        {"id": 4, "image_id": 20, "category_id": 7, "bbox": [40, 40, 150, 120]},
        {"id": 5, "image_id": 20, "category_id": 3, "bbox": [400, 300, 24, 20]},
        {"id": 6, "image_id": 20, "category_id": 1, "bbox": [200, 250, 80, 80], "iscrowd": 1},
    ],
}


def _complete(ann):
    """Adds iscrowd, area and segmentation (uncompressed RLE for a crowd, as COCO has it)."""
    ann.setdefault("iscrowd", 0)
    x, y, w, h = ann["bbox"]
    ann["area"] = w * h
    if ann["iscrowd"]:  # column-major runs of the box, starting with background
        runs = [x * 480 + y] + [h, 480 - h] * (w - 1) + [h, 480 * (640 - x - w) + 480 - y - h]
        ann["segmentation"] = {"counts": runs, "size": [480, 640]}
    else:
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]


for _ann in GT["annotations"]:
    _complete(_ann)
CATEGORY_TO_LABEL = {v: k for k, v in LABEL_TO_CATEGORY.items()}


@pytest.fixture(scope="module")
def gt_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gt") / "instances_val.json"
    path.write_text(json.dumps(GT))
    return path


def detections(shift=0.0, images=(10, 20, 30)):
    """The non-crowd ground truth as detections, moved right by ``shift`` box widths."""
    out = []
    for image_id in images:
        anns = [a for a in GT["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        boxes = np.array([[y / 480, (x + shift * w) / 640, (y + h) / 480, (x + w + shift * w) / 640]
                          for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        out.append({"image_id": image_id, "boxes": boxes.astype(np.float32),
                    "scores": np.linspace(0.9, 0.5, len(anns)),
                    "classes": np.array([CATEGORY_TO_LABEL[a["category_id"]] for a in anns])})
    return out


def test_perfect_detections_give_ap_one(gt_path, tmp_path):
    results = tmp_path / "out" / "results.json"
    metrics = coco_eval.coco_evaluate(gt_path, detections(), LABEL_TO_CATEGORY,
                                      results_path=results)
    assert set(metrics) == set(coco_eval.METRICS)
    for name in coco_eval.METRICS:
        assert metrics[name] == pytest.approx(1.0), name
    written = json.loads(results.read_text())
    assert len(written) == 5
    assert {r["category_id"] for r in written} == {1, 3, 7}  # original ids, not labels
    by_box = {(r["image_id"], r["category_id"]): r["bbox"] for r in written}
    np.testing.assert_allclose(by_box[(10, 7)], [300, 100, 200, 250], atol=1e-3)
    np.testing.assert_allclose(by_box[(20, 3)], [400, 300, 24, 20], atol=1e-3)


def test_shifted_detections_score_less(gt_path):
    perfect = coco_eval.coco_evaluate(gt_path, detections(), LABEL_TO_CATEGORY)
    slightly = coco_eval.coco_evaluate(gt_path, detections(shift=0.1), LABEL_TO_CATEGORY)
    far = coco_eval.coco_evaluate(gt_path, detections(shift=0.6), LABEL_TO_CATEGORY)
    assert slightly["AP50"] == pytest.approx(1.0)  # IoU 0.82 still counts at 0.5
    assert 0 < slightly["AP"] < perfect["AP"]
    assert slightly["AP75"] == pytest.approx(1.0)
    assert far["AP50"] == pytest.approx(0.0) and far["AP"] == pytest.approx(0.0)


def test_wrong_class_or_missing_image_scores_less(gt_path):
    wrong = detections()
    wrong[0]["classes"] = np.roll(wrong[0]["classes"], 1)
    metrics = coco_eval.coco_evaluate(gt_path, wrong, LABEL_TO_CATEGORY)
    assert metrics["AP"] < 1.0
    # image 20 listed without detections: its objects are missed
    partial = detections()
    partial[1] = {"image_id": 20, "boxes": np.zeros((0, 4)), "scores": [], "classes": []}
    assert coco_eval.coco_evaluate(gt_path, partial, LABEL_TO_CATEGORY)["AP"] < 1.0
    # evaluation covers the listed images only
    only_first = coco_eval.coco_evaluate(gt_path, detections(images=(10,)), LABEL_TO_CATEGORY)
    assert only_first["AP"] == pytest.approx(1.0)


def test_zero_detections_give_zeros(gt_path, tmp_path):
    assert coco_eval.coco_evaluate(gt_path, [], LABEL_TO_CATEGORY) == dict.fromkeys(
        coco_eval.METRICS, 0.0
    )
    empty = [{"image_id": i, "boxes": np.zeros((0, 4)), "scores": np.zeros(0),
              "classes": np.zeros(0, int)} for i in (10, 20)]
    results = tmp_path / "results.json"
    metrics = coco_eval.coco_evaluate(gt_path, empty, LABEL_TO_CATEGORY, results_path=results)
    assert metrics == dict.fromkeys(coco_eval.METRICS, 0.0)
    assert json.loads(results.read_text()) == []


def test_accepts_a_coco_object_and_checks_inputs(gt_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    assert coco_eval.coco_evaluate(gt, detections(), LABEL_TO_CATEGORY)["AP"] == pytest.approx(1)
    with pytest.raises(KeyError, match="image id 99"):
        coco_eval.coco_evaluate(gt, [dict(detections()[0], image_id=99)], LABEL_TO_CATEGORY)
    with pytest.raises(KeyError, match="class 9"):
        bad = detections()
        bad[0]["classes"] = np.array([9, 1, 1])
        coco_eval.coco_evaluate(gt, bad, LABEL_TO_CATEGORY)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_eval.coco_evaluate(gt_path.parent / "missing.json", [], LABEL_TO_CATEGORY)


def test_synthetic_ground_truth_through_the_pipeline_scores_one(tmp_path):
    from pipelines.data import coco
    from pipelines.synthetic import coco as synthetic_coco

    root = synthetic_coco.generate(tmp_path, num_train=1, num_val=6, image_size=96, seed=2)
    index = coco.load_coco(root, "val")
    dets = []
    for e in coco.coco_dataset(index):
        keep = ~e["is_crowd"].numpy()
        dets.append({"image_id": int(e["image_id"]), "boxes": e["boxes"].numpy()[keep],
                     "scores": np.ones(keep.sum()), "classes": e["labels"].numpy()[keep]})
    metrics = coco_eval.coco_evaluate(index, dets, index.label_to_category)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP"] == pytest.approx(1.0)
