"""The COCO and VOC jobs train through a tf.data service on 127.0.0.1 (``--data-service``).

A dispatcher runs in this process; its two workers run as separate processes, as they would on
other machines, and each notes in a file how many tasks (shares of a job's data) it has been
given, so that the test sees that both workers produced the training batches. The COCO test
trains 2 steps through the service, then checks that the service's batches carry the same SSD
targets (anchor matching runs in the pipeline, on the workers) as the local pipeline encodes
for the same images.

The VOC pipeline reads its masks in Python (PIL, scipy), which a worker in another process
cannot run: under a service the job first converts them to grayscale PNGs of class indices
(``voc.graph_masks``), which the workers read with TensorFlow ops; the remote-worker test checks
that the labels served are the palette masks' indices. The VOC job is also trained through
workers started in this process (the job hands its pipeline to the service and trains on what
comes back).
"""

import dataclasses
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_mnv2 import errors
from pipelines.data import augment, coco, seg_augment, voc
from pipelines.jobs import detection, driver, segmentation
from pipelines.synthetic import coco as synthetic_coco
from pipelines.synthetic import voc as synthetic_voc

service = tf.data.experimental.service

# A service worker that writes to ``argv[2]`` how many tasks it has been given so far (polled:
# each rise in its count of current tasks).
WORKER = """
import os, sys, time
import tensorflow as tf
service = tf.data.experimental.service
worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=sys.argv[1], port=0))
given, before = 0, 0
while True:
    tasks = worker._num_tasks()
    if tasks > before:
        given += tasks - before
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(str(given))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    before = tasks
    time.sleep(0.02)
"""


@dataclasses.dataclass
class Service:
    target: str  # "grpc://127.0.0.1:port" of the dispatcher
    task_files: list  # one per worker process: how many tasks it has been given

    def tasks_given(self):
        return [int(f.read_text()) if f.exists() else 0 for f in self.task_files]


@pytest.fixture(scope="module")
def remote_service(tmp_path_factory):
    """A dispatcher here and two worker processes on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("service")
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    (folder / "worker.py").write_text(WORKER)
    files = [folder / f"tasks{i}.txt" for i in range(2)]
    logs = [open(folder / f"worker{i}.log", "w") for i in range(2)]  # not a pipe: never fills
    workers = [subprocess.Popen([sys.executable, str(folder / "worker.py"), address, str(f)],
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                                stdout=log, stderr=subprocess.STDOUT)
               for f, log in zip(files, logs)]
    try:
        deadline = time.time() + 120  # a TensorFlow import on a busy 2-core machine
        while dispatcher._num_workers() < 2:
            for proc, log in zip(workers, logs):
                assert proc.poll() is None, open(log.name).read()[-2000:]
            assert time.time() < deadline, "the service workers did not register"
            time.sleep(0.2)
        yield Service(dispatcher.target, files)
    finally:
        for proc, log in zip(workers, logs):
            proc.kill()
            proc.wait()
            log.close()
        dispatcher.stop()


class LocalWorkers:
    """Two service workers in this process, polled for the most tasks each held at once."""

    def __init__(self):
        self.dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
        address = self.dispatcher.target.split("://")[1]
        self.workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address,
                                                                  port=0)) for _ in range(2)]
        self.seen = [0, 0]
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            self.seen = [max(s, w._num_tasks()) for s, w in zip(self.seen, self.workers)]
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.thread.join()
        for worker in self.workers:
            worker.stop()
        self.dispatcher.stop()


def take(dataset, batches):
    return list(dataset.take(batches).as_numpy_iterator())


def match(image, candidates):
    """The index of the candidate image equal to ``image`` (the same element, the same flip)."""
    gaps = [float(np.abs(image - c).max()) for c in candidates]
    best = int(np.argmin(gaps))
    # the same decode and resize on the same CPU: equal up to rounding, while two different
    # synthetic images (or one and its mirror) differ by O(1) somewhere in [-1, 1]
    assert gaps[best] < 1e-4, f"no local image equals the service's (closest: {gaps[best]})"
    return best


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    synthetic_coco.generate(root, num_train=8, num_val=2, image_size=64, num_classes=2,
                            min_scale=0.3, max_objects=3, crowd_fraction=0.0)
    return root


COCO_RECIPE = dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=4, epochs=1,
                                  warmup_epochs=0.0, augment="flip")


@pytest.mark.slow
def test_coco_job_trains_through_remote_workers(tmp_path, remote_service, coco_root):
    run_dir = tmp_path / "run"
    before = remote_service.tasks_given()
    metrics = detection.run(coco_dir=str(coco_root), run_dir=str(run_dir), recipe=COCO_RECIPE,
                            verbose=0, data_service=remote_service.target)
    given = [n - b for n, b in zip(remote_service.tasks_given(), before)]
    losses = driver.read_history(str(run_dir))["loss"]
    print(f"COCO through the tf.data service: loss {losses}, tasks given to the workers {given}")
    assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
    assert (run_dir / "metrics.json").exists() and "AP50" in metrics
    assert all(n >= 1 for n in given)  # both workers made batches for this run


@pytest.mark.slow
def test_coco_service_batches_carry_the_local_targets(remote_service, coco_root):
    index = coco.load_coco(str(coco_root), "train")
    anchors = detection.build_model(COCO_RECIPE, index.num_classes).anchors
    source = coco.coco_dataset(index)
    served = take(detection.train_dataset(source, COCO_RECIPE, anchors,
                                          data_service=remote_service.target), 4)
    # the local pipeline's encoding of every training image, unflipped and flipped (the
    # service's only augmentation with augment="flip")
    encode = detection._encode(anchors)
    local = []
    for element in source:
        for seen in (element, augment.flip_horizontal(element)):
            prepared = augment.eval_preprocess(seen, COCO_RECIPE.input_size)
            image, targets = encode(prepared["image"], prepared)
            local.append((image.numpy(), {k: v.numpy() for k, v in targets.items()}))
    matched, positives = set(), 0
    for images, targets in served:
        for i, image in enumerate(images):
            j = match(image, [candidate for candidate, _ in local])
            matched.add(j // 2)
            np.testing.assert_array_equal(targets["classes"][i], local[j][1]["classes"])
            np.testing.assert_allclose(targets["boxes"][i], local[j][1]["boxes"], atol=1e-5)
            positives += int((targets["classes"][i] > 0).sum())
    assert positives > 0  # anchors matched objects: the comparison covers encoded boxes
    assert len(matched) >= 4  # 16 images served: more than a few of the 8 distinct ones


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return synthetic_voc.generate(tmp_path_factory.mktemp("voc"), num_train=8, num_val=2,
                                  image_size=64, num_classes=3)


def assert_served_voc_is_local(index, served):
    """Each served (image, label) at scale 1 is the Python reader's image and mask of a training
    example, padded to the 64 px crop, flipped or not."""
    local = []
    for element in voc.voc_dataset(index):
        image, label = seg_augment.train_preprocess(element["image"], element["label"], 64,
                                                    1.0, 1.0, flip=False, seed=[0, 0])
        local += [(image.numpy(), label.numpy()),
                  (image.numpy()[:, ::-1], label.numpy()[:, ::-1])]
    for images, labels in served:
        for image, label in zip(images, labels):
            j = match(image, [candidate for candidate, _ in local])
            np.testing.assert_array_equal(label, local[j][1])


VOC_RECIPE = dataclasses.replace(segmentation.EMBEDDED, crop_size=64, eval_size=64,
                                 batch_size=4, epochs=1, warmup_epochs=0.0)


def test_voc_pipeline_runs_on_remote_workers(remote_service, voc_root, tmp_path):
    # the masks are converted to graph-readable PNGs first (voc.graph_masks): the workers in
    # other processes run the whole pipeline with TensorFlow ops, and the labels they send are
    # the palette masks' class indices
    index = voc.load_voc(str(voc_root), "train")
    recipe = dataclasses.replace(VOC_RECIPE, min_scale=1.0, max_scale=1.0)
    served = take(segmentation.train_dataset(index, recipe, data_service=remote_service.target,
                                             mask_dir=str(tmp_path / "masks")), 2)
    assert_served_voc_is_local(index, served)


def test_graph_masks_match_the_python_reader(voc_root, tmp_path):
    index = voc.load_voc(str(voc_root), "train")
    converted = voc.graph_masks(index, tmp_path / "masks")
    assert converted.masks_in_graph and converted.ids == index.ids
    local = {e["image_id"].numpy(): e for e in voc.voc_dataset(index)}
    for element in voc.voc_dataset(converted):
        want = local[element["image_id"].numpy()]
        np.testing.assert_array_equal(element["label"], want["label"])
        np.testing.assert_array_equal(element["image"], want["image"])
    with pytest.raises(errors.InputError, match="mask_dir"):
        segmentation.train_dataset(index, VOC_RECIPE, data_service="grpc://127.0.0.1:1")


@pytest.mark.slow
def test_voc_job_trains_through_local_workers(tmp_path, voc_root):
    workers = LocalWorkers()
    try:
        run_dir = tmp_path / "run"
        metrics = segmentation.run(voc_dir=str(voc_root), run_dir=str(run_dir),
                                   recipe=VOC_RECIPE, verbose=0,
                                   data_service=workers.dispatcher.target)
        losses = driver.read_history(str(run_dir))["loss"]
        print(f"VOC through the tf.data service: loss {losses}, worker tasks {workers.seen}")
        assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
        assert (run_dir / "metrics.json").exists() and "mean_iou" in metrics
        assert all(n >= 1 for n in workers.seen)

        # at scale 1 the 64 px images are only padded to the 64 px crop and maybe flipped: the
        # service's batches are the local preprocessing of training images
        recipe = dataclasses.replace(VOC_RECIPE, min_scale=1.0, max_scale=1.0)
        index = voc.load_voc(str(voc_root), "train")
        served = take(segmentation.train_dataset(index, recipe,
                                                 data_service=workers.dispatcher.target,
                                                 mask_dir=str(tmp_path / "masks")), 3)
        assert_served_voc_is_local(index, served)
    finally:
        workers.stop()
