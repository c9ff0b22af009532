"""The figures behind the metric floors and numeric bounds of the end-to-end tests: the metric of
the same short run evaluated before training (epoch 0, the untrained model) and after every
epoch, for a seed; and the QAT int8 file's distance from its fake-quant model.

    python tests/measure_floors.py voc 48 seed=S                  # test_voc_job_end_to_end
    python tests/measure_floors.py voc 48 nval=6 seed=S eval_scales=1.0 eval_flip=false
                                                                  # test_deploy's voc_run
    python tests/measure_floors.py coco 10 ntrain=256 nval=32 classes=2 min_scale=0.3 \
        max_objects=3 crowd_fraction=0 learning_rate=1e-2 augment=flip input_size=64 \
        batch_size=8 box_loss=giou seed=S   # test_coco_job_end_to_end's run (EVERY=N: evaluate
                                # every N epochs)
    python tests/measure_floors.py qat_coco 10 seed=S [broken=1e-6]
                                  # test_deploy's coco_run, then its TFMOT and Keras 3 QAT files
    keras-mnv2 train imagenet --epochs 3 --seed S                 # test_embedded_run_learns
    python tests/measure_floors.py qat 8                          # test_keras_qat's int8 bounds
    python tests/measure_floors.py imagenet 3 optimizer=adam learning_rate=0.01 ...

(run from the repository root; the last form takes ImagenetRecipe fields, see the
classification kill test). A broken run is the same run untrained, or with a learning rate too
small to learn (1e-7; 1e-6 for COCO); its batch-norm statistics still follow the data.

FLOORS: measured on a 2-core AMD EPYC (Zen 3, AVX2 + FMA; `lscpu`: "AMD EPYC"), tensorflow 2.21.0,
keras 3.15.1, numpy 2.4.6. A floor sits at least twice as far below the worst trained figure as
above the best broken one. (ONEDNN_MAX_CPU_ISA=AVX2 changes nothing on this CPU, which has no
AVX-512; on the Intel Xeon where the old set-ups failed, the QAT figure of seed 0 was the same.)
The GIoU row of test_coco_job_end_to_end: a 2-core AMD EPYC with AVX-512 (CPU family 26), the
same versions.

| test | metric | trained, worst .. best (seeds) | floor | broken, best |
|---|---|---|---|---|
| test_voc_job_end_to_end | mean IoU | 0.469 .. 0.635 (5) | > 0.30 | 0.220 untrained; 0.000, 0.020 at 1e-7 |
| same | best shape IoU | 0.638 .. 0.836 (5) | > 0.2 | 0.000 untrained; 0.061 at 1e-7 |
| test_voc_export_evaluates_like_keras | Keras mean IoU | 0.499 .. 0.627 (5) | > 0.30 | 0.218 untrained |
| test_embedded_run_learns | top-1 | 0.392 .. 0.528 (5) | > 0.18 | 0.090, 0.058 at 1e-7 (chance 0.10) |
| same | top-5 | 0.906 .. 0.952 (5) | > 0.63 | 0.512, 0.492 at 1e-7 |
| test_coco_job_end_to_end (GIoU box loss) | AP50 | 0.028 .. 0.074 (5) | > 0.013 | 0.000 untrained; 0.001, 0.006 at 1e-6 |
| same, smooth L1 (the test's loss before) | AP50 | 0.030 .. 0.053 (5); 0.030-0.099 in 3 test runs | > 0.013 | 0.000 untrained; 0.003, 0.006 at 1e-6 |
| test_coco_qat_fine_tunes_and_exports (TFMOT QAT int8 file, 1 epoch of 4 steps) | AP50 | 0.041 .. 0.072 (5); 0.049, 0.080 in 2 test runs | > 0.013 | 0.000 untrained; 0.0055 at 1e-6 |
| test_coco_keras_qat_job_fine_tunes_and_exports (Keras 3 QAT, same) | AP50 | 0.041 .. 0.069 (5); 0.045, 0.081 in 2 test runs | > 0.013 | 0.000 untrained; 0.0056 at 1e-6 |

| test_keras_qat_converts_to_int8 (steps of the output) | own weights, seeds 0-7 | bound | other weights, seeds 0-2 |
|---|---|---|---|
| classifier | mean 0.08-0.33, max 1-2 | mean <= 0.6, max <= 3 | mean 79-116 |
| SSDLite | mean 0.02-0.11, max 1-2 | mean <= 0.3, max <= 3 | |
| DeepLabV3 (align_corners; half-pixel) | mean 0.32-0.95, within 2 steps >= 95.3%, max 2-5 | mean <= 1.5, within 2 >= 90%, max <= 8 | mean 136-203 |
"""
import dataclasses
import os
import pathlib
import sys
import tempfile
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.dirname(os.path.abspath(__file__))]
import keras  # noqa: E402

from pipelines.jobs import driver  # noqa: E402

job, epochs = sys.argv[1], int(sys.argv[2])
extra = dict(a.split("=") for a in sys.argv[3:])
tmp = tempfile.mkdtemp()
keras.utils.set_random_seed(0)
t0 = time.time()
orig_fit = driver.fit

if job == "imagenet":  # the kill test's run (test_classification.py), top-1 before and after
    from test_classification import make_tiny_imagenet
    from pipelines.jobs import classification
    from pipelines.data import imagenet as imagenet_data

    def value(text):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(text.lower(), text)

    data_dir = make_tiny_imagenet(pathlib.Path(tmp) / "data")
    fields = dict(alpha=0.35, resolution=32, batch_size=4, epochs=epochs, steps_per_epoch=3,
                  shuffle_buffer=16, weight_decay=0.0, use_ema=True, ema_momentum=0.9)
    fields.update({k: value(v) for k, v in extra.items()})
    recipe = dataclasses.replace(classification.PAPER, **fields)
    print(recipe)
    _, val, _ = classification.sources(str(data_dir), None, None, None, None, None)

    class Untrained(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            r = classification.evaluate(self.model, imagenet_data.eval_dataset(
                val, 4, 32, crop_fraction=recipe.crop_fraction))
            print(f"MEASURE imagenet untrained top1 {r['top1']:.4f}", flush=True)

    m = classification.run(data_dir=str(data_dir), run_dir=os.path.join(tmp, "run"),
                           recipe=recipe, verbose=0, callbacks=[Untrained()])
    print(f"MEASURE imagenet trained top1 {m['top1']:.4f} t={time.time() - t0:.0f}s")
    sys.exit(0)
elif job == "qat":  # test_keras_qat_converts_to_int8_and_matches_its_tflite's figures:
    # `measure_floors.py qat 8 [kinds=deeplab,deeplab_half_pixel]` runs build() seeds 0..N-1
    import numpy as np

    from keras_mnv2.deploy import export, keras_qat, qat, tflite
    from test_keras_qat import build, first_output

    x = np.random.RandomState(0).uniform(-1, 1, (8, 96, 96, 3)).astype("float32")  # images(8)
    kinds = extra.get("kinds", "classifier,ssdlite,deeplab,deeplab_half_pixel").split(",")
    for kind in kinds:
        for seed in range(epochs):
            q = qat.quantize(build(kind, seed), calibration_data=x, scheme="keras", log=None)
            path = export.export_tflite(q, os.path.join(tmp, "raw.tflite"), mode="qat",
                                        output="raw").path
            got = first_output(tflite.run_signature(path, x[:4]))
            step = keras_qat.output_steps(q)[-1]
            # a broken reference: the fake-quant model of other weights (seed + 100)
            other = qat.quantize(build(kind, seed + 100), calibration_data=x, scheme="keras",
                                 log=None)
            for name, reference in (("own", q), ("other weights", other)):
                e = np.abs(got - first_output(reference(x[:4], training=False))) / step
                print(f"MEASURE qat {kind} seed {seed} vs {name}: mean {e.mean():.3f} steps, "
                      f"within 1 {np.mean(e <= 1.001):.4f}, within 2 {np.mean(e <= 2.001):.4f}, "
                      f"max {e.max():.2f} t={time.time() - t0:.0f}s", flush=True)
    sys.exit(0)
elif job == "qat_coco":  # test_deploy's coco_run and its two QAT tests: `measure_floors.py
    # qat_coco 10 seed=S [steps=4] [broken=untrained|1e-6|both|none]` trains the fixture's COCO
    # run for N epochs with Keras seed S, fine-tunes it with each QAT scheme (1 epoch of `steps`
    # steps) and prints the float AP50 and the AP50 of both QAT int8 files; then the broken
    # runs, QAT-fine-tuned and evaluated alike: the same set-up trained 1 epoch at 1e-7 (the
    # untrained weights), and/or N epochs at 1e-6
    from pipelines.jobs import deploy, detection
    from test_deploy import COCO_DATA, coco_recipe, make_coco_data

    seed, steps = int(extra.get("seed", 0)), int(extra.get("steps", 4))
    root = make_coco_data(os.path.join(tmp, "coco"))
    print(COCO_DATA, coco_recipe(epochs, seed), flush=True)
    runs = [("trained", coco_recipe(epochs, seed))]
    broken = extra.get("broken", "untrained")
    if broken in ("untrained", "both"):
        runs.append(("untrained", dataclasses.replace(coco_recipe(1, seed), learning_rate=1e-7)))
    if broken in ("1e-6", "both"):  # learns nothing, but its batch-norm statistics follow the data
        runs.append(("1e-6", dataclasses.replace(coco_recipe(epochs, seed), learning_rate=1e-6)))
    for name, recipe in runs:
        keras.utils.set_random_seed(seed)
        run_dir = os.path.join(tmp, name)
        m = detection.run(coco_dir=root, run_dir=run_dir, recipe=recipe, verbose=0)
        print(f"MEASURE qat_coco seed {seed} {name} float AP50 {m['AP50']:.4f} "
              f"t={time.time() - t0:.0f}s", flush=True)
        for scheme in ("tfmot", "keras"):
            report = deploy.run_qat("coco", run_dir, epochs=1, steps_per_epoch=steps, verbose=0,
                                    scheme=scheme)
            ap50 = deploy.evaluate_tflite("coco", report.path, run_dir,
                                          keras_metrics=False)["tflite"]["AP50"]
            print(f"MEASURE qat_coco seed {seed} {name} {scheme} QAT int8 AP50 {ap50:.4f} "
                  f"ops {dict(sorted(report.ops.items()))} t={time.time() - t0:.0f}s",
                  flush=True)
    sys.exit(0)
elif job == "voc":  # test_voc_job_end_to_end's run. Keys: ntrain nval size classes data_seed
    # (the generator's) and any VocRecipe field, e.g. seed=3 learning_rate=6e-3 output_stride=8
    from pipelines.data import voc
    from pipelines.jobs import segmentation
    from pipelines.synthetic import voc as synthetic_voc

    classes = int(extra.pop("classes", 3))
    size = int(extra.pop("size", 64))
    root = synthetic_voc.generate(os.path.join(tmp, "voc"), num_train=int(extra.pop("ntrain", 48)),
                                  num_val=int(extra.pop("nval", 4)), image_size=size,
                                  num_classes=classes, seed=int(extra.pop("data_seed", 0)),
                                  min_scale=float(extra.pop("min_scale", synthetic_voc.MIN_SCALE)),
                                  max_scale=float(extra.pop("max_scale", synthetic_voc.MAX_SCALE)),
                                  max_objects=int(extra.pop("max_objects",
                                                            synthetic_voc.MAX_OBJECTS)))
    fields = dict(alpha=0.35, crop_size=size, eval_size=size, output_stride=8, batch_size=8,
                  epochs=epochs, eval_scales="0.75,1.0", eval_flip=True, learning_rate=6e-3)
    for key, text in extra.items():
        kind = type(getattr(segmentation.EMBEDDED, key))
        fields[key] = kind(text) if kind is not bool else text.lower() == "true"
    recipe = dataclasses.replace(segmentation.EMBEDDED, **fields)
    print(recipe, flush=True)
    val = voc.load_voc(root, "val", class_names=synthetic_voc.class_names(classes))

    def metric(model):
        return segmentation.evaluate(model, segmentation.eval_dataset(val, size, 8),
                                     classes + 1)["mean_iou"]

    def run():
        return segmentation.run(voc_dir=str(root), run_dir=os.path.join(tmp, "run"),
                                recipe=recipe, verbose=0)

    key = "mean_iou"
else:  # "coco": test_coco_job_end_to_end's run. Keys: ntrain nval classes size data_seed
    # min_scale max_objects crowd_fraction (the generator's), seed (Keras'), and any CocoRecipe
    # field, e.g. input_size=96 learning_rate=1e-2 class_loss=focal
    from pipelines.data import coco, coco_eval
    from pipelines.jobs import detection
    from pipelines.synthetic import coco as synthetic_coco

    root = os.path.join(tmp, "coco")
    synthetic_coco.generate(root, num_train=int(extra.pop("ntrain", 48)),
                            num_val=int(extra.pop("nval", 12)),
                            image_size=int(extra.pop("size", 128)),
                            num_classes=int(extra.pop("classes", 3)),
                            seed=int(extra.pop("data_seed", 0)),
                            min_scale=float(extra.pop("min_scale", synthetic_coco.MIN_SCALE)),
                            max_objects=int(extra.pop("max_objects", synthetic_coco.MAX_OBJECTS)),
                            crowd_fraction=float(extra.pop("crowd_fraction",
                                                           synthetic_coco.CROWD_FRACTION)))
    keras.utils.set_random_seed(int(extra.get("seed", 0)))
    fields = dict(input_size=96, batch_size=16, epochs=epochs, augment="ssd", cache=False,
                  box_loss="smooth_l1")  # as first measured; the job test's is box_loss=giou
    for key, text in extra.items():
        kind = type(getattr(detection.EMBEDDED, key))
        fields[key] = kind(text) if kind is not bool else text.lower() == "true"
    recipe = dataclasses.replace(detection.EMBEDDED, **fields)
    print(recipe, flush=True)
    val = coco.load_coco(root, "val")
    source = coco.coco_dataset(val)

    def metric(model):
        found = detection.predict_detections(model, detection.eval_dataset(source, recipe),
                                             model.anchors, recipe)
        return coco_eval.coco_evaluate(val.coco, found, val.label_to_category,
                                       results_path=os.path.join(tmp, "r.json"))["AP50"]

    def run():
        return detection.run(coco_dir=root, run_dir=os.path.join(tmp, "run"), recipe=recipe,
                             verbose=0)

    key = "AP50"


class Eval(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        print(f"MEASURE {job} epoch 0 (untrained) metric {metric(self.model):.4f} "
              f"t={time.time() - t0:.0f}s", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if os.environ.get("EVERY") and (epoch + 1) % int(os.environ["EVERY"]):
            print(f"MEASURE {job} epoch {epoch + 1} loss {logs.get('loss'):.3f} "
                  f"t={time.time() - t0:.0f}s", flush=True)
            return
        print(f"MEASURE {job} epoch {epoch + 1} metric {metric(self.model):.4f} loss "
              f"{logs.get('loss'):.3f} t={time.time() - t0:.0f}s", flush=True)


def fit(*args, **kwargs):
    kwargs["extra_callbacks"] = [Eval()]
    return orig_fit(*args, **kwargs)


driver.fit = fit
m = run()
print(f"MEASURE {job} final job metric {m[key]:.4f} total t={time.time() - t0:.0f}s "
      f"{m.get('per_class_iou', '')}", flush=True)
