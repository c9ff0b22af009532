"""The figures behind the metric floors of the end-to-end job tests: the metric of the same
short run evaluated before training (epoch 0, the untrained model) and after every epoch.

    python tests/measure_floors.py voc 16 ntrain=48 lr=6e-3
    python tests/measure_floors.py coco 10 ntrain=96 augment=flip
    python tests/measure_floors.py coco 10 ntrain=256 nval=32 classes=2 min_scale=0.3 \
        max_objects=3 crowd_fraction=0 learning_rate=1e-2 augment=flip input_size=64 \
        batch_size=8 seed=0     # test_coco_job_end_to_end's run (EVERY=N: evaluate every N epochs)
    python tests/measure_floors.py imagenet 3 optimizer=adam learning_rate=0.01 ...

(run from the repository root; the last form takes ImagenetRecipe fields, see the
classification kill test).
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
elif job == "voc":  # test_voc_job_end_to_end's run
    from pipelines.data import voc
    from pipelines.jobs import segmentation
    from pipelines.synthetic import voc as synthetic_voc

    root = synthetic_voc.generate(os.path.join(tmp, "voc"), num_train=int(extra.get("ntrain", 16)),
                                  num_val=4, image_size=64, num_classes=3)
    recipe = dataclasses.replace(segmentation.EMBEDDED, alpha=0.35, crop_size=64, eval_size=64,
                                 output_stride=16, batch_size=8, epochs=epochs,
                                 eval_scales="0.75,1.0", eval_flip=True,
                                 learning_rate=float(extra.get("lr", 2e-3)))
    val = voc.load_voc(root, "val", class_names=synthetic_voc.class_names(3))

    def metric(model):
        return segmentation.evaluate(model, segmentation.eval_dataset(val, 64, 8), 4)["mean_iou"]

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
    fields = dict(input_size=96, batch_size=16, epochs=epochs, augment="ssd", cache=False)
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
print(f"MEASURE {job} final job metric {m[key]:.4f} total t={time.time() - t0:.0f}s", flush=True)
