"""Deployment of trained runs: export, TFLite evaluation against the Keras metric, QAT and the
comparison table, on tiny runs trained inside the tests."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from pipelines import cli
from pipelines.jobs import deploy, detection, segmentation
from pipelines.synthetic import coco as synthetic_coco, voc as synthetic_voc


def test_recipe_round_trips_through_metrics_json():
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=96, epochs=1)
    metrics = json.loads(json.dumps({"recipe": dataclasses.asdict(recipe)}))
    assert deploy.recipe_from_metrics("coco", metrics) == recipe
    voc = deploy.recipe_from_metrics("voc", {"recipe": {"crop_size": 64}})
    assert voc == dataclasses.replace(segmentation.PAPER, crop_size=64)
    with pytest.raises(ValueError, match="lacks: \\['bogus'\\]"):
        deploy.recipe_from_metrics("coco", {"recipe": {"bogus": 1}})
    with pytest.raises(ValueError, match="no recipe"):
        deploy.recipe_from_metrics("voc", {})
    with pytest.raises(ValueError, match="job must be one of"):
        deploy.recipe_from_metrics("mnist", metrics)


def test_missing_run_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json not found"):
        deploy.job_data("coco", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="last.keras not found"):
        deploy.load_model("voc", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TFLite file not found"):
        deploy.evaluate_tflite("voc", str(tmp_path / "x.tflite"), str(tmp_path))
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"recipe": {}, "dataset": "tfds:/somewhere"}))
    with pytest.raises(ValueError, match="tfds:/somewhere"):
        deploy.job_data("coco", str(tmp_path))
    with pytest.raises(ValueError, match="export mode must be one of"):
        deploy.run_export("coco", str(tmp_path), modes=("qat",))
    assert cli.main(["eval", "coco", "--tflite", str(tmp_path / "x.tflite"),
                     "--run-dir", str(tmp_path)]) == 2


def test_table_reports_metric_times_100_and_size(tmp_path):
    rows = [{"model": "Keras float32", "size_bytes": 9_350_000, "AP50": 0.8822, "AP": 0.4567},
            {"model": "TFLite PTQ int8", "size_bytes": 1_120_000, "AP50": 0.861, "AP": None}]
    text = deploy.table_markdown("coco", rows)
    assert "| model | AP50 x100 | AP x100 | size (MB) |" in text
    assert "| Keras float32 | 88.2 | 45.7 | 9.35 |" in text
    assert "| TFLite PTQ int8 | 86.1 | - | 1.12 |" in text
    deploy.write_table("coco", rows, str(tmp_path))
    assert (tmp_path / "deploy.md").read_text() == text
    assert json.loads((tmp_path / "deploy.json").read_text())[1]["AP50"] == 0.861
    assert (tmp_path / "deploy.png").stat().st_size > 1000


def test_table_reports_size_ratio_and_where_int8_bytes_go():
    rows = [{"model": "Keras float32", "size_bytes": 9_350_000, "AP50": 0.88, "AP": 0.45},
            {"model": "TFLite float32", "size_bytes": 2_855_220, "AP50": 0.88, "AP": 0.45,
             "size": {"weights": 2_762_716, "quantization": 0, "other": 92_504,
                      "total": 2_855_220, "channels": 0}},
            {"model": "TFLite PTQ int8", "size_bytes": 1_120_048, "AP50": 0.88, "AP": 0.45,
             "size": {"weights": 732_994, "quantization": 287_328, "other": 99_726,
                      "total": 1_120_048, "channels": 23_830}}]
    text = deploy.table_markdown("coco", rows)
    assert "| model | AP50 x100 | AP x100 | size (MB) | size / float32 |" in text
    assert "| Keras float32 | 88.0 | 45.0 | 9.35 | - |" in text
    assert "| TFLite float32 | 88.0 | 45.0 | 2.86 | 100% |" in text
    assert "| TFLite PTQ int8 | 88.0 | 45.0 | 1.12 | 39% |" in text
    assert ("- TFLite PTQ int8: weights 0.73 MB (27% of the float32 weights), quantization "
            "parameters 0.29 MB (23,830 per-channel") in text
    assert "TFLite float32: weights" not in text


def test_cli_parses_the_deploy_commands():
    parser = cli.build_parser()
    args = parser.parse_args(["qat", "voc", "--epochs", "3", "--learning-rate", "1e-4"])
    assert (args.job, args.epochs, args.learning_rate, args.func) == ("voc", 3, 1e-4, cli._qat)
    args = parser.parse_args(["export", "coco", "--modes", "float32,float16", "--io-dtype",
                              "int8"])
    assert (args.modes, args.io_dtype, args.func) == ("float32,float16", "int8", cli._export)
    args = parser.parse_args(["eval", "imagenet", "--tflite", "m.tflite"])
    assert (args.job, args.tflite, args.model, args.func) == ("imagenet", "m.tflite", None,
                                                              cli._eval)
    with pytest.raises(SystemExit):
        parser.parse_args(["qat", "mnist"])


# The COCO set-up of test_coco_job_end_to_end (tests/test_detection_job.py), whose AP50 floor is
# measured: 2 classes of 1-3 objects at least 30% of the shorter side, 64 px, batch 8, 1e-2.
COCO_DATA = dict(num_train=256, num_val=32, image_size=128, num_classes=2, min_scale=0.3,
                 max_objects=3, crowd_fraction=0.0)


def make_coco_data(root):
    synthetic_coco.generate(root, **COCO_DATA)
    return str(root)


def coco_recipe(epochs, seed=0):
    # smooth L1: the box loss the floors were measured with (tests/measure_floors.py)
    return dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=8, epochs=epochs,
                               learning_rate=1e-2, augment="flip", cache=False, seed=seed,
                               box_loss="smooth_l1")


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    """A tiny VOC run: DeepLabV3 0.35 at 64 px, trained as test_voc_job_end_to_end (48 epochs of
    6 steps at 6e-3, output stride 8: it learns decisively, see the figures there)."""
    tmp = tmp_path_factory.mktemp("deploy_voc")
    root = synthetic_voc.generate(tmp / "voc", num_train=48, num_val=6, image_size=64,
                                  num_classes=3)
    recipe = dataclasses.replace(segmentation.EMBEDDED, crop_size=64, eval_size=64,
                                 output_stride=8, batch_size=8, epochs=48, learning_rate=6e-3)
    run_dir = tmp / "run"
    segmentation.run(voc_dir=str(root), run_dir=str(run_dir), recipe=recipe, verbose=0)
    return str(run_dir)


@pytest.mark.slow
def test_voc_export_evaluates_like_keras_and_tabulates(voc_run):
    reports = deploy.run_export("voc", voc_run, modes=("float32", "int8"))
    assert set(reports) == {"float32", "int8"}
    assert reports["float32"].path == os.path.join(voc_run, "tflite", "voc_float32.tflite")
    assert reports["int8"].size_bytes < 0.5 * reports["float32"].size_bytes
    assert reports["int8"].float_ops == ()
    result = deploy.evaluate_tflite("voc", reports["float32"].path, voc_run)
    keras_iou, tflite_iou = result["keras"]["mean_iou"], result["tflite"]["mean_iou"]
    print(f"VOC mean IoU: Keras {keras_iou:.4f}, TFLite float32 {tflite_iou:.4f}")
    assert result["tflite"]["images"] == result["keras"]["images"] == 6
    # The floor (tests/measure_floors.py, FLOORS): `python tests/measure_floors.py voc 48 nval=6
    # seed=S eval_scales=1.0 eval_flip=false` (this fixture's run) printed mean IoU 0.618, 0.499,
    # 0.573, 0.627, 0.536 trained (S = 0-4, AMD EPYC) and 0.218 untrained (all background; with
    # 4 classes at most 0.25). The floor 0.30 lies 0.08 above the untrained figure and 0.20 below
    # the worst trained one.
    assert 0.30 < keras_iou < 1.0, f"Keras mean IoU {keras_iou:.4f}"
    assert tflite_iou == pytest.approx(keras_iou, abs=0.005)
    assert result["tflite"]["pixel_accuracy"] == pytest.approx(
        result["keras"]["pixel_accuracy"], abs=0.005)
    saved = json.loads(open(os.path.join(voc_run, "metrics.json")).read())
    assert keras_iou == pytest.approx(saved["mean_iou"], abs=1e-4)  # the job's own evaluation

    rows = deploy.compare("voc", voc_run)
    assert [r["model"] for r in rows] == ["Keras float32", "TFLite float32", "TFLite PTQ int8"]
    assert rows[1]["mean_iou"] == pytest.approx(tflite_iou, abs=1e-6)
    int8_iou = rows[2]["mean_iou"]
    print(f"VOC mean IoU: TFLite PTQ int8 {int8_iou:.4f}")
    assert abs(int8_iou - keras_iou) < 0.2 and int8_iou > 0.26, f"int8 mean IoU {int8_iou:.4f}"
    table = open(os.path.join(voc_run, "deploy.md")).read()
    assert f"| TFLite float32 | {100 * tflite_iou:.1f} |" in table
    assert os.path.getsize(os.path.join(voc_run, "deploy.png")) > 1000


# The QAT int8 AP50 floor (tests/measure_floors.py, FLOORS), measured with `python
# tests/measure_floors.py qat_coco 10 seed=S` (this fixture's run with Keras seed S, then both
# QAT schemes, 1 epoch of 4 steps each; AMD EPYC, 2 cores): TFMOT file 0.065, 0.072, 0.041,
# 0.044, 0.050 and Keras 3 file 0.056, 0.069, 0.045, 0.066, 0.041 (S = 0-4; float 0.064, 0.059,
# 0.052, 0.040, 0.053); TFMOT 0.080, 0.049 and Keras 3 0.081, 0.045 in two runs of these tests
# (float 0.079, 0.053). Broken: the same QAT of the untrained model (1 epoch at 1e-7) 0.000
# for both schemes (S = 0); of a model trained at 1e-6 (`broken=1e-6`), which learns nothing
# but whose batch-norm statistics follow the data, 0.0055 TFMOT and 0.0056 Keras 3 (S = 1;
# float 0.0057). The floor, the float run's (test_coco_job_end_to_end), lies 0.0075 above the
# best broken figure and 0.028 below the worst trained one.
COCO_EPOCHS, QAT_STEPS, QAT_AP50_FLOOR = 10, 4, 0.013


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """The COCO run of test_coco_job_end_to_end (COCO_DATA, coco_recipe: 10 epochs of 32 steps,
    about a minute on 2 cores), trained once for the two QAT schemes below."""
    tmp = tmp_path_factory.mktemp("deploy_coco")
    root = make_coco_data(tmp / "coco")
    keras.utils.set_random_seed(0)  # the weights: a module fixture runs before the test's seed
    run_dir = str(tmp / "run")
    detection.run(coco_dir=root, run_dir=run_dir, recipe=coco_recipe(COCO_EPOCHS), verbose=0)
    return run_dir


@pytest.fixture(scope="module")
def coco_tfmot_qat(coco_run):
    """The TFMOT QAT of coco_run (1 epoch of QAT_STEPS steps): its ExportReport."""
    return deploy.run_qat("coco", coco_run, epochs=1, steps_per_epoch=QAT_STEPS, verbose=0)


def check_qat_ap50(report, run_dir):
    result = deploy.evaluate_tflite("coco", report.path, run_dir, keras_metrics=False)
    assert result["keras"] is None and result["tflite"]["images"] == COCO_DATA["num_val"]
    ap50 = result["tflite"]["AP50"]
    print(f"{os.path.basename(report.path)}: AP50 {ap50:.4f}")
    assert QAT_AP50_FLOOR < ap50 <= 1.0, f"QAT int8 AP50 {ap50:.4f}"


def read_history(path):
    lines = open(path).read().splitlines()
    assert len(lines) == 2 and np.isfinite(float(lines[1].split(",")[1])), lines
    return lines


@pytest.mark.slow
def test_coco_qat_fine_tunes_and_exports(coco_run, coco_tfmot_qat):
    report = coco_tfmot_qat
    assert report.path == os.path.join(coco_run, "tflite", "coco_qat.tflite")
    assert report.ops["TFLite_Detection_PostProcess"] == 1
    assert report.float_ops == ("TFLite_Detection_PostProcess",)  # the rest is int8
    assert report.metadata == "1.2.0"  # TFLite metadata for MediaPipe Tasks, the run's labels
    max_detections = coco_recipe(COCO_EPOCHS).max_detections
    assert report.outputs["detection_boxes"] == ((1, max_detections, 4), "float32")
    read_history(os.path.join(coco_run, "qat", "history.csv"))
    check_qat_ap50(report, coco_run)


@pytest.mark.slow
def test_coco_keras_qat_job_fine_tunes_and_exports(coco_run, coco_tfmot_qat):
    from keras_mnv2.deploy import export, keras_qat, tflite

    report = deploy.run_qat("coco", coco_run, epochs=1, steps_per_epoch=QAT_STEPS, verbose=0,
                            scheme="keras")
    assert report.path == deploy.tflite_path("coco", coco_run, "qat", variant="keras")
    assert report.path.endswith("coco_qat_keras.tflite")
    # The same int8 graph as the TFMOT file of the same run, counted off that file, but for
    # QUANTIZE: the input's, plus one requantization in front of the concatenations for each of
    # the 12 heads (boxes and classes of 6 maps) whose calibrated range differs from the
    # concatenation's; a head holding both ends of that range needs none. Each scheme
    # calibrates and fine-tunes its own ranges, so the count may differ between the files
    # (test_keras_qat.py allows 11-13 on perturbed random weights); it was 13 in both files in
    # all the runs measured for the floor below.
    tfmot_ops = tflite.op_counts(coco_tfmot_qat.path)
    assert tfmot_ops == coco_tfmot_qat.ops
    assert {k: v for k, v in report.ops.items() if k != "QUANTIZE"} == {
        k: v for k, v in tfmot_ops.items() if k != "QUANTIZE"}
    assert 1 <= report.ops["QUANTIZE"] <= 1 + 12 and 1 <= tfmot_ops["QUANTIZE"] <= 1 + 12
    assert report.float_ops == (export.POSTPROCESS_OP,)
    read_history(os.path.join(coco_run, "qat_keras", "history.csv"))
    loaded = keras.saving.load_model(os.path.join(coco_run, "qat_keras", "model.keras"),
                                     compile=False)
    assert keras_qat.is_keras_quantized(loaded)
    check_qat_ap50(report, coco_run)


def test_expansion_splits_flag():
    assert deploy.parse_expansion_splits("3") == 3
    assert deploy.parse_expansion_splits("3,6,3") == (3, 6, 3) + (1,) * 14
    assert deploy.parse_expansion_splits(None) is None
    for bad in ("0", "3,x", "2," * 17 + "2", "-1"):
        with pytest.raises(ValueError, match="expansion splits must be"):
            deploy.parse_expansion_splits(bad)
    parser = cli.build_parser()
    args = parser.parse_args(["qat", "coco", "--expansion-splits", "3,6,3"])
    assert args.expansion_splits == "3,6,3"
    args = parser.parse_args(["export", "voc", "--expansion-splits", "2"])
    assert args.expansion_splits == "2"
    assert parser.parse_args(["export", "voc"]).expansion_splits is None
    assert deploy.tflite_path("coco", "r", "qat", split=True) == os.path.join(
        "r", "tflite", "coco_qat_split.tflite")


@pytest.mark.slow
def test_voc_split_export_sits_beside_the_unsplit_one(voc_run):
    from keras_mnv2.deploy import memory

    splits = deploy.parse_expansion_splits("3,6,3")
    split_path = deploy.tflite_path("voc", voc_run, "float32", split=True)
    try:
        split = deploy.run_export("voc", voc_run, modes=("float32",),
                                  expansion_splits=splits)["float32"]
        assert split.path == split_path
        whole = deploy.run_export("voc", voc_run, modes=("float32",))["float32"]
        # The run's model (output stride 8 on 64 px) peaks in its dilated layers, which the
        # split of the first blocks leaves alone: 311,296 bytes either way. At output stride 16
        # the first blocks hold the peak and the split lowers it (294,912 -> 212,992 bytes).
        assert memory.tflite_arena_bytes(split.path) <= memory.tflite_arena_bytes(whole.path)
        from keras_mnv2.deploy import export
        from keras_mnv2.segmentation.deeplab import DeepLabV3
        from keras_mnv2.split import split_expansion

        stride16 = DeepLabV3(num_classes=4, alpha=0.35, input_shape=(64, 64, 3),
                             output_stride=16, aspp=False)
        assert memory.tflite_arena_bytes(export.convert(
            split_expansion(stride16, splits), mode="float32")) < memory.tflite_arena_bytes(
            export.convert(stride16, mode="float32"))
        rows = deploy.compare("voc", voc_run, modes=("float32",))
        assert [r["model"] for r in rows] == ["Keras float32", "TFLite float32",
                                              "TFLite float32 split"]
        assert rows[2]["mean_iou"] == pytest.approx(rows[1]["mean_iou"], abs=0.005)
        assert rows[2]["images"] == rows[1]["images"] == 6
    finally:
        if os.path.exists(split_path):
            os.remove(split_path)
