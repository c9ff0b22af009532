"""The COCO job end to end on a tiny synthetic COCO-format dataset (real readers, real eval)."""

import dataclasses
import json
import os

import pytest

from pipelines.jobs import detection
from pipelines.synthetic import coco as synthetic_coco


def test_check_recipe_names_the_field_and_range():
    detection.check_recipe(detection.PAPER)
    detection.check_recipe(detection.EMBEDDED)
    for change, message in (
            (dict(input_size=32), r"CocoRecipe\.input_size must be in \[64, inf\), got 32"),
            (dict(epochs=0), r"epochs must be in \[1, inf\), got 0"),
            (dict(learning_rate=-1e-3), r"learning_rate must be in \(0, inf\)"),
            (dict(background_prior=1.0), r"background_prior must be in \(0, 1\), got 1\.0"),
            (dict(nms_iou=0.0), r"nms_iou must be in \(0, 1\]"),
            (dict(score_threshold=1.5), r"score_threshold must be in \[0, 1\]"),
            (dict(warmup_epochs=100.0), r"warmup_epochs must be in \[0, epochs=100\)"),
            (dict(optimizer="adagrad"), r"optimizer must be one of 'rmsprop', 'adam', 'sgd'"),
            (dict(class_loss="hinge"), r"class_loss must be one of 'softmax', 'focal'"),
            (dict(augment="mixup"), r"augment must be one of 'ssd', 'flip', got 'mixup'")):
        with pytest.raises(ValueError, match=message):
            detection.check_recipe(dataclasses.replace(detection.PAPER, **change))
    with pytest.raises(ValueError, match="max_detections"):  # checked before any data is read
        detection.run(coco_dir="/nonexistent",
                      recipe=dataclasses.replace(detection.PAPER, max_detections=0))


@pytest.mark.slow
def test_coco_job_end_to_end(tmp_path):
    # The set and recipe of the AP50 floor (issue 14): a short run that learns measurably. On
    # the default set (3 classes, objects down to 8% of the image) a short run learns no AP50 it
    # can show (0.001 after 60 steps, 0.005 after 180); with 2 classes of 1-3 objects at least
    # 30% of the shorter side, at 64 px, batch 8 and 320 steps it does.
    root = tmp_path / "coco"
    synthetic_coco.generate(root, num_train=256, num_val=32, image_size=128, num_classes=2,
                            min_scale=0.3, max_objects=3, crowd_fraction=0.0)
    # the embedded recipe's GIoU box loss (the floor was measured with both, below)
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=8, epochs=10,
                                 learning_rate=1e-2, augment="flip", cache=False)
    assert recipe.box_loss == "giou"
    run_dir = tmp_path / "run"
    metrics = detection.run(coco_dir=str(root), run_dir=str(run_dir), recipe=recipe, verbose=0)
    for name in ("metrics.json", "curves.png", "detections.png", "detections_val.json",
                 "last.keras", "history.csv"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) >= {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}
    # AP50 floor (tests/measure_floors.py, FLOORS), measured with `python tests/measure_floors.py
    # coco 10 ntrain=256 nval=32 classes=2 min_scale=0.3 max_objects=3 crowd_fraction=0
    # learning_rate=1e-2 augment=flip input_size=64 batch_size=8 box_loss=giou seed=S` (this
    # run, Keras seed S): trained 0.030, 0.029, 0.074, 0.028, 0.036 (S = 0-4); untrained (epoch
    # 0) 0.000; learning_rate=1e-6, a model that learns nothing but whose batch-norm statistics
    # follow the data, 0.001 and 0.006 (S = 0, 1). The floor lies 0.007 above the best broken
    # figure and 0.015 below the worst trained one. With box_loss=smooth_l1 (the loss before):
    # trained 0.030-0.053 (S = 0-4) and 0.030-0.099 in three test runs, broken 0.003-0.006;
    # 20 epochs instead of 10 printed 0.070 and 0.103 for S = 0 and 4 (kept at 10 for the
    # suite's time). With 1 class, that model reached 0.011 against 0.049-0.087 trained:
    # anchors alone hit large objects of a single class.
    assert saved["AP50"] > 0.013, (
        f"AP50 {saved['AP50']:.4f} <= 0.013: measured 0.028-0.074 trained (5 seeds), 0.000 "
        f"untrained, 0.001-0.006 with learning_rate=1e-6")
    assert saved["train_images"] == 256 and saved["val_images"] == 32
    assert saved["skipped_images"] == {"train": 0, "val": 0}
    assert metrics["recipe"]["input_size"] == 64
    # results JSON uses the original (non-contiguous) COCO category ids
    results = json.loads((run_dir / "detections_val.json").read_text())
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    # a finished run restarted with the same command does not train again
    before = os.path.getmtime(run_dir / "last.keras")
    detection.run(coco_dir=str(root), run_dir=str(run_dir), recipe=recipe, verbose=0)
    assert os.path.getmtime(run_dir / "last.keras") == before
