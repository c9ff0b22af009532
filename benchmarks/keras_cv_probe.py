"""What keras-cv 0.9 does here, offline, under Keras 3.15 / TF 2.21 (docs/notes.md, keras-cv).

``python -m benchmarks.keras_cv_probe`` (not in ``make bench``)
builds keras-cv's YOLOV8Detector and RetinaNet on a MobileNetV3-Small backbone given by its
arguments (keras-cv's presets are fetched from Kaggle, which a run here cannot reach), prints
their parameter counts, fits YOLOV8 for two one-batch steps with boxes in pixel ``xyxy`` and in
``rel_yxyx`` and prints the losses, and tries ``train_on_batch``. A probe; the peer benchmark
is ``benchmarks/peer_bench.py`` (``make bench`` section "peer").
"""

import time

import numpy as np

# MobileNetV3-Small (Howard et al. 2019, Table 2): expansion = exp size / input channels.
SMALL = dict(
    stackwise_expansion=[1, 72 / 16, 88 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
    stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
    stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
    stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
    stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
    stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8,
)
SIZE, CLASSES = 160, 5


def _batch(relative):
    rng = np.random.default_rng(0)
    x = rng.random((4, SIZE, SIZE, 3), dtype=np.float32)
    boxes = np.full((4, 2, 4), -1, "float32")
    classes = np.full((4, 2), -1, "float32")
    boxes[:, 0], classes[:, 0] = [16, 16, 80, 80], 1  # x1 y1 x2 y2, pixels
    boxes[1, 1], classes[1, 1] = [32, 40, 120, 150], 3
    if relative:  # rel_yxyx: y1 x1 y2 x2 / size (padding rows stay -1)
        real = classes >= 0
        boxes[real] = boxes[real][:, [1, 0, 3, 2]] / SIZE
    return x, {"boxes": boxes, "classes": classes}


def main():
    start = time.time()
    import keras
    import keras_cv

    print(f"import keras_cv {keras_cv.__version__} (keras {keras.__version__}): "
          f"{time.time() - start:.1f} s", flush=True)

    def backbone():
        return keras_cv.models.MobileNetV3Backbone(include_rescaling=False,
                                                   input_shape=(SIZE, SIZE, 3), **SMALL)

    retina = keras_cv.models.RetinaNet(num_classes=CLASSES, bounding_box_format="xyxy",
                                       backbone=backbone())
    print(f"RetinaNet, MobileNetV3-Small, {SIZE} px, {CLASSES} classes: "
          f"{retina.count_params():,} parameters", flush=True)
    for fmt in ("xyxy", "rel_yxyx"):
        keras.utils.set_random_seed(0)
        model = keras_cv.models.YOLOV8Detector(num_classes=CLASSES, bounding_box_format=fmt,
                                               backbone=backbone(), fpn_depth=1)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      classification_loss="binary_crossentropy", box_loss="ciou",
                      run_eagerly=True)
        x, y = _batch(relative=fmt.startswith("rel"))
        losses = [model.fit(x, y, epochs=1, batch_size=4, verbose=0).history["loss"][0]
                  for _ in range(2)]
        print(f"YOLOV8Detector, MobileNetV3-Small, {fmt}: {model.count_params():,} parameters;"
              f" loss after fit steps 1, 2: {losses[0]:.3f}, {losses[1]:.3f}", flush=True)
    try:
        model.train_on_batch(x, y)
        print("train_on_batch: works", flush=True)
    except Exception as e:  # noqa: BLE001 - reported, the point of the probe
        print(f"train_on_batch: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
