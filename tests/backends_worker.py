"""Runs under one Keras backend (KERAS_BACKEND is fixed at import, so tests/test_backends.py
starts this in a subprocess per backend). Steps, in a shared folder DIR:

  reference DIR   build the three tiny models, give them random weights, save <model>.keras
                  and the inputs x_<model>.npy (run on TensorFlow)
  predict DIR     load each <model>.keras, write out_<backend>_<model>.npz
  train DIR       fit a tiny SSDLite and a tiny segmentation net a few steps from tf.data (the
                  job's own SSD pipeline: augment + target encoding), write their epoch losses to
                  train_<backend>.json, save trained_<backend>.keras and its predictions
  crossload DIR   load every other backend's trained_*.keras, write cross_<backend>_<other>.npz
  decode DIR      decode + class-wise NMS of fixed random outputs, write decode_<backend>.npz

and, for tests/test_backend_jobs.py, ``job RUN_DIR ARGS...``: the ``keras-mnv2 ARGS...`` command
(``pipelines.cli.main``, the command's entry point) in this process, then the run's last.keras
reloaded on this backend and run on fixed random images: RUN_DIR/reloaded_<backend>.npz holds
the images ("x") and the outputs. The process exits with the command's status.
"""

import dataclasses
import glob
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import keras_mnv2  # noqa: F401  registers the losses that compiled .keras files name

BACKEND = keras.backend.backend()
SIZE = 96


def _flat(outputs):
    if isinstance(outputs, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
    return {"output": keras.ops.convert_to_numpy(outputs)}


def _models():
    from keras_mnv2 import DeepLabV3, MobileNetV2, SSDLite

    return {
        "mobilenet_v2": lambda: MobileNetV2(alpha=0.35, input_shape=(SIZE, SIZE, 3), classes=10),
        "ssdlite": lambda: SSDLite(3, alpha=0.35, input_size=SIZE),
        "deeplab_v3": lambda: DeepLabV3(4, alpha=0.35, input_shape=(SIZE, SIZE, 3)),
    }


def reference(folder):
    rng = np.random.RandomState(0)
    for name, build in _models().items():
        keras.utils.set_random_seed(0)
        model = build()
        # Random weights everywhere, batch-norm statistics included, so that no layer is an
        # identity and every op's numerics show in the outputs.
        weights = []
        for w in model.weights:
            shape = tuple(w.shape)
            if "moving_variance" in w.path:
                weights.append(rng.uniform(0.5, 1.5, shape))
            elif "moving_mean" in w.path or "beta" in w.path or "bias" in w.path:
                weights.append(rng.normal(0, 0.1, shape))
            elif "gamma" in w.path:
                weights.append(rng.uniform(0.5, 1.5, shape))
            else:
                weights.append(keras.ops.convert_to_numpy(w))
        model.set_weights([w.astype("float32") for w in weights])
        model.save(os.path.join(folder, f"{name}.keras"))
        np.save(os.path.join(folder, f"x_{name}.npy"),
                rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype("float32"))


def predict(folder):
    for name in _models():
        model = keras.saving.load_model(os.path.join(folder, f"{name}.keras"))
        x = np.load(os.path.join(folder, f"x_{name}.npy"))
        np.savez(os.path.join(folder, f"out_{BACKEND}_{name}.npz"), **_flat(model.predict(x, verbose=0)))


def _detection_source(count=8):
    """Images with one or two bright boxes of class 1 or 2 on a dark background."""
    rng = np.random.RandomState(1)
    images = np.full((count, SIZE, SIZE, 3), 30, "uint8")
    boxes = np.zeros((count, 2, 4), "float32")
    labels = np.zeros((count, 2), "int32")
    for i in range(count):
        for j in range(1 + i % 2):
            y0, x0 = rng.uniform(0.05, 0.5, 2)
            h, w = rng.uniform(0.25, 0.45, 2)
            boxes[i, j] = [y0, x0, y0 + h, x0 + w]
            labels[i, j] = 1 + (i + j) % 2
            images[i, int(y0 * SIZE):int((y0 + h) * SIZE), int(x0 * SIZE):int((x0 + w) * SIZE),
                   labels[i, j]] = 230
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "boxes": boxes, "labels": labels,
        "is_crowd": np.zeros((count, 2), bool), "image_id": np.arange(count, dtype="int64")})


def _segmentation_data(count=8):
    rng = np.random.RandomState(2)
    x = rng.uniform(-1, 1, (count, 32, 32, 3)).astype("float32")
    y = np.argmax(x, axis=-1).astype("int32")  # the class is the brightest channel
    y[:, :2] = 255  # an ignored border
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def train(folder):
    from keras_mnv2 import MeanIoU, SSDLite, SegmentationLoss
    from keras_mnv2.detection.losses import ssd_losses
    from pipelines.jobs import detection

    keras.utils.set_random_seed(0)
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=SIZE, batch_size=4,
                                 augment="flip", cache=False)
    model = SSDLite(2, alpha=0.35, input_size=SIZE, bn_momentum=0.9)
    data = detection.train_dataset(_detection_source(), recipe, model.anchors)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ssd_losses())
    ssd = model.fit(data, epochs=4, steps_per_epoch=2, verbose=0).history["loss"]

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    seg_model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(hidden))
    seg_model.compile(optimizer=keras.optimizers.Adam(5e-2), loss=SegmentationLoss(),
                      metrics=[MeanIoU(3)])
    seg = seg_model.fit(_segmentation_data().repeat(), epochs=4, steps_per_epoch=2,
                        verbose=0).history

    with open(os.path.join(folder, f"train_{BACKEND}.json"), "w") as f:
        json.dump({"ssdlite": [float(v) for v in ssd], "segmentation": seg["loss"],
                   "mean_iou": seg["mean_iou"]}, f)
    model.save(os.path.join(folder, f"trained_{BACKEND}.keras"))
    x = np.load(os.path.join(folder, "x_ssdlite.npy"))
    np.savez(os.path.join(folder, f"trained_{BACKEND}.npz"), **_flat(model.predict(x, verbose=0)))


def crossload(folder):
    x = np.load(os.path.join(folder, "x_ssdlite.npy"))
    for path in sorted(glob.glob(os.path.join(folder, "trained_*.keras"))):
        other = os.path.basename(path)[len("trained_"):-len(".keras")]
        if other == BACKEND:
            continue
        # compile=False, as export does: a compiled file from torch names torch's optimizer
        # class (keras.src.backend.torch.optimizers), and loading that compiled on TensorFlow
        # imports torch into the TF process, which crashed it (segfault) here.
        model = keras.saving.load_model(path, compile=False)
        np.savez(os.path.join(folder, f"cross_{BACKEND}_{other}.npz"),
                 **_flat(model.predict(x, verbose=0)))


def decode_inputs():
    from keras_mnv2.detection.anchors import ssd_anchors

    anchors = ssd_anchors([6, 3, 2, 1])
    rng = np.random.RandomState(3)
    encodings = rng.normal(size=(2, len(anchors), 4)).astype("float32")
    logits = rng.normal(scale=3.0, size=(2, len(anchors), 5)).astype("float32")
    return encodings, logits, anchors


def decode(folder):
    from keras_mnv2.detection.postprocess import decode_detections

    results = {}
    for mode in ("softmax", "focal"):
        out = decode_detections(*decode_inputs(), score_threshold=0.3, max_detections=20,
                                max_detections_per_class=8, mode=mode)
        results.update({f"{mode}_{k}": keras.ops.convert_to_numpy(v) for k, v in out.items()})
    np.savez(os.path.join(folder, f"decode_{BACKEND}.npz"), **results)


def job(run_dir, cli_args):
    from pipelines import cli

    status = cli.main(cli_args)
    if status != 0:
        return status
    model = keras.saving.load_model(os.path.join(run_dir, "last.keras"), compile=False)
    x = np.random.RandomState(4).uniform(-1, 1, (2, *model.input_shape[1:])).astype("float32")
    np.savez(os.path.join(run_dir, f"reloaded_{BACKEND}.npz"), x=x,
             **_flat(model.predict(x, verbose=0)))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "job":
        sys.exit(job(sys.argv[2], sys.argv[3:]))
    folder = sys.argv[-1]
    for step in sys.argv[1:-1]:
        {"reference": reference, "predict": predict, "train": train, "crossload": crossload,
         "decode": decode}[step](
            folder)
    print(f"{BACKEND}: done {' '.join(sys.argv[1:-1])}")
