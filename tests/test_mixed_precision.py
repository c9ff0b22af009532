"""Mixed precision (``training.run_job(mixed_precision=True)``): each job's model trains a few
steps under ``mixed_bfloat16`` on the CPU with the job's own optimizer and loss, its outputs stay
float32, and the float32 copy the jobs keep afterwards (``training.float32_copy``) saves to
``.keras``, reloads and exports to a TFLite file with float32 tensors only.

Each model sees one fixed batch again and again (a few steps on fresh data need not lower the
loss); at this learning rate the loss falls on it under any seed.
"""

import dataclasses

import keras
import numpy as np
import pytest

from pipelines.jobs import classification, detection, segmentation, training

STEPS = 8


def run_case(job_module, recipe, data, build, compile_args, images, targets, tmp_path):
    with training.policy_scope("mixed_bfloat16"):
        model = build(recipe, data)
        model.compile(optimizer=job_module.make_optimizer(recipe, STEPS),
                      **compile_args(recipe, data))
        outputs = model.predict(images[:1], verbose=0)
        dtypes = {str(np.asarray(o).dtype) for o in keras.tree.flatten(outputs)}
        compute = model.layers[2].compute_dtype
        history = model.fit(images, targets, batch_size=len(images), epochs=STEPS, verbose=0)
    losses = history.history["loss"]
    job = training.Job(check_recipe=None, load=None, build_model=build, make_optimizer=None,
                       compile_args=None, train_data=None, evaluate=None)
    copy = training.float32_copy(job, model, recipe, data)
    path = tmp_path / "model.keras"
    copy.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    assert {layer.compute_dtype for layer in reloaded.layers} == {"float32"}
    np.testing.assert_allclose(
        keras.tree.flatten(reloaded(images[:1]))[0], keras.tree.flatten(copy(images[:1]))[0],
        rtol=1e-5, atol=1e-5)
    return losses, dtypes, compute, reloaded


def check_tflite(model, path):
    import tensorflow as tf

    from keras_mnv2.deploy.export import export_tflite

    export_tflite(model, path)
    interpreter = tf.lite.Interpreter(model_path=str(path))
    types = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert not types & {np.float16, tf.bfloat16.as_numpy_dtype}, types
    assert np.float32 in types


def check_losses(name, losses):
    print(f"{name} mixed_bfloat16 loss: first {losses[0]:.4f} last {losses[-1]:.4f}")
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_detection_mixed_bfloat16(tmp_path):
    from keras_mnv2.detection.losses import ssd_losses
    from keras_mnv2.detection.matching import encode_targets

    rng = np.random.RandomState(0)
    keras.utils.set_random_seed(0)
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=4,
                                 learning_rate=1e-2, warmup_epochs=0.0)
    data = training.Data(None, None, 2, 4 * STEPS, "test")
    anchors = detection.build_model(recipe, 2).anchors
    images = rng.uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.4, 0.3, 0.9, 0.9]], "float32")
    box_targets, classes = (np.asarray(t) for t in encode_targets(
        boxes, np.array([1, 2], "int32"), anchors))
    targets = {"boxes": np.concatenate([box_targets, classes[:, None].astype("float32")], -1),
               "classes": classes}
    targets = {k: np.repeat(v[None], 4, axis=0) for k, v in targets.items()}
    losses, dtypes, compute, model = run_case(
        detection, recipe, data, lambda r, d: detection.build_model(r, d.num_classes),
        lambda r, d: {"loss": ssd_losses(mode=r.class_loss)}, images, targets, tmp_path)
    assert compute == "bfloat16" and dtypes == {"float32"}  # float32 heads
    check_losses("detection", losses)
    check_tflite(model, tmp_path / "ssdlite.tflite")


@pytest.mark.slow
def test_segmentation_mixed_bfloat16(tmp_path):
    from keras_mnv2.segmentation import MeanIoU, SegmentationLoss

    rng = np.random.RandomState(0)
    keras.utils.set_random_seed(0)
    recipe = dataclasses.replace(segmentation.EMBEDDED, crop_size=64, eval_size=64,
                                 batch_size=4, learning_rate=1e-2, warmup_epochs=0.0)
    data = training.Data(None, None, 3, 4 * STEPS, "test")
    images = rng.uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    labels = np.zeros((4, 64, 64), "int32")
    labels[:, 8:40, 8:40] = 1
    labels[:, 40:, 30:] = 2
    images[..., 0] += labels * 0.5
    losses, dtypes, compute, model = run_case(
        segmentation, recipe, data,
        lambda r, d: segmentation.build_model(r, d.num_classes, r.crop_size),
        lambda r, d: {"loss": SegmentationLoss(), "metrics": [MeanIoU(d.num_classes)]},
        images, labels, tmp_path)
    assert compute == "bfloat16" and dtypes == {"float32"}
    check_losses("segmentation", losses)
    check_tflite(model, tmp_path / "deeplab.tflite")


@pytest.mark.slow
def test_classification_mixed_bfloat16(tmp_path):
    rng = np.random.RandomState(0)
    keras.utils.set_random_seed(0)
    recipe = dataclasses.replace(classification.EMBEDDED, resolution=64, batch_size=8,
                                 learning_rate=1e-3, lr_batch_size=8, warmup_epochs=0.0,
                                 validate=False)
    data = training.Data(None, None, 3, 8 * STEPS, "test")
    labels = (np.arange(8) % 3).astype("int32")
    images = rng.uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    images[..., 0] += labels[:, None, None] * 0.5
    losses, dtypes, compute, model = run_case(
        classification, recipe, data,
        lambda r, d: classification.build_model(r, d.num_classes),
        lambda r, d: classification.compile_args(r, d.num_classes), images, labels, tmp_path)
    assert compute == "bfloat16" and dtypes == {"float32"}
    check_losses("classification", losses)
    check_tflite(model, tmp_path / "mobilenet_v2.tflite")
