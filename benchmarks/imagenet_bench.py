"""ImageNet benchmarks for ``make bench`` (figures printed side by side in one run; nothing timed
is asserted anywhere).

``input_pipeline_bench()``: images/second per core of the training input pipeline, the fused
decode-and-crop (``tf.image.decode_and_crop_jpeg``) against a plain reference that decodes the
whole JPEG and then crops, on real-size JPEGs (~500 px, written to a temporary folder).

``training_bench()``: training images/second of keras_mnv2's MobileNetV2 and
keras.applications.MobileNetV2 fed by the same pipeline with the same batch and recipe, with and
without XLA (``jit_compile``).

Both time the contenders in alternating rounds, so that drift in the machine's load hits them
alike, and print the median.

    python -m benchmarks.imagenet_bench
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def write_jpegs(folder, count, side=500, num_classes=4, seed=0):
    """``count`` photo-sized JPEGs (the synthetic shapes at ``side`` px, quality 90) in the
    ImageNet folder layout under ``folder``; returns the folder."""
    from PIL import Image

    from pipelines.synthetic import imagenet as synthetic_imagenet

    for i in range(count):
        label = i % num_classes
        wnid = synthetic_imagenet.CLASSES[label][0]
        os.makedirs(os.path.join(folder, "train", wnid), exist_ok=True)
        pixels, _ = synthetic_imagenet.render(np.random.default_rng([seed, i]), label, side)
        Image.fromarray(pixels).save(os.path.join(folder, "train", wnid, f"{i}.JPEG"),
                                     quality=90)
    return folder


def _single_core(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _images_per_cpu_second(iterator, batches):
    """Images per second of this process's CPU time: with one thread, images/s on one core,
    whatever else the machine is running."""
    start = time.process_time()
    count = 0
    for _ in range(batches):
        count += int(next(iterator)[1].shape[0])
    return count / (time.process_time() - start)


def input_pipeline_bench(num_images=64, side=500, image_size=224, batch_size=16, batches=16,
                         rounds=3):
    """Prints (and returns) images/second on one core (one tf.data thread, timed in process CPU
    time) for the fused and the reference pipeline."""
    from pipelines.data import imagenet as imagenet_data

    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(tmp, num_images, side)
        source = imagenet_data.folder_source(tmp, "train")
        sizes = [os.path.getsize(p) for p in _paths(tmp)]
        pipelines = {
            "fused decode_and_crop_jpeg": _single_core(imagenet_data.train_dataset(
                source, batch_size, image_size, seed=0, cache=True, fused=True)),
            "reference: decode, then crop": _single_core(imagenet_data.train_dataset(
                source, batch_size, image_size, seed=0, cache=True, fused=False)),
        }
        for ds in pipelines.values():  # fill the caches: what is timed is decode and crop
            _images_per_cpu_second(iter(ds), num_images // batch_size + 2)
        rates = {name: [] for name in pipelines}
        for _ in range(rounds):
            for name, ds in pipelines.items():
                iterator = iter(ds)  # one pipeline running at a time: CPU time is its own
                _images_per_cpu_second(iterator, 2)
                rates[name].append(_images_per_cpu_second(iterator, batches))
                del iterator
    result = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\n== ImageNet training input pipeline, images/s per core (one thread, CPU time): "
          f"{num_images} JPEGs of {side} px (mean {np.mean(sizes) / 1e3:.0f} kB), Inception crop "
          f"to {image_size} px ==")
    header = f"{'pipeline':<32} {'img/s/core':>10}"
    print(header)
    print("-" * len(header))
    for name, rate in result.items():
        print(f"{name:<32} {rate:>10.1f}")
    fused, plain = result.values()
    print(f"{'fused / reference':<32} {fused / plain:>9.2f}x")
    return result


def _paths(folder):
    for dirpath, _, files in os.walk(folder):
        for name in files:
            yield os.path.join(dirpath, name)


def training_bench(alpha=0.35, image_size=128, batch_size=32, steps=8, rounds=2,
                   num_images=64, side=256):
    """Prints (and returns) training images/second of both MobileNetV2 builds, with and without
    XLA, on the same pipeline, batch and recipe (the paper's RMSProp, label smoothing)."""
    import dataclasses

    import keras

    import keras_mnv2
    from pipelines.jobs import classification
    from pipelines.data import imagenet as imagenet_data

    recipe = dataclasses.replace(classification.PAPER, alpha=alpha, resolution=image_size,
                                 batch_size=batch_size, weight_decay=0.0)
    num_classes = 4
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(tmp, num_images, side, num_classes)
        source = imagenet_data.folder_source(tmp, "train")
        dataset = imagenet_data.train_dataset(source, batch_size, image_size, seed=0,
                                              cache=True)
        builders = {
            "keras_mnv2": lambda: keras_mnv2.MobileNetV2(
                alpha=alpha, input_shape=(image_size, image_size, 3), classes=num_classes,
                classifier_activation=None, bn_momentum=recipe.bn_momentum),
            "keras.applications": lambda: keras.applications.MobileNetV2(
                alpha=alpha, input_shape=(image_size, image_size, 3), classes=num_classes,
                classifier_activation=None, weights=None),
        }
        models = {}
        for jit in (False, True):
            for name, build in builders.items():
                keras.utils.set_random_seed(0)
                model = build()
                classification.compile_model(
                    model, dataclasses.replace(recipe, jit_compile=jit), num_classes, 100)
                model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # trace, compile
                models[(name, jit)] = model
        times = {key: [] for key in models}
        for _ in range(rounds):
            for key, model in models.items():
                start = time.perf_counter()
                model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
                times[key].append(steps * batch_size / (time.perf_counter() - start))
    result = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n== Training images/s, MobileNetV2 {alpha}/{image_size}, batch {batch_size}, "
          f"the same cached pipeline and recipe ==")
    header = f"{'model':<20} {'jit_compile=False':>18} {'jit_compile=True':>17}"
    print(header)
    print("-" * len(header))
    for name in builders:
        print(f"{name:<20} {result[(name, False)]:>18.1f} {result[(name, True)]:>17.1f}")
    for jit in (False, True):
        ratio = result[("keras_mnv2", jit)] / result[("keras.applications", jit)]
        print(f"keras_mnv2 / keras.applications, jit_compile={jit}: {ratio:.3f}")
    return result


if __name__ == "__main__":
    input_pipeline_bench()
    training_bench()
