"""``make bench``: figures printed side by side in one run (no timed tests anywhere).

Section 1: MobileNetV2 1.0/224, keras_mnv2 vs keras.applications: parameters, MAdds, Keras predict
throughput and TFLite float latency (median of repeated invocations, XNNPACK, 1 and 2 threads).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def keras_throughput(model, x, repeats):
    model.predict(x, verbose=0)  # warm-up and tracing
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict(x, verbose=0)
    return repeats * len(x) / (time.perf_counter() - start)


def tflite_latency_ms(contents, x, threads, repeats, rounds=5):
    """Median invoke time (ms) of each model in ``contents`` ({name: flatbuffer}).

    The models are timed in alternating rounds so that drift in machine load hits all alike.
    """
    from keras_mnv2 import tflite

    interps = {}
    for name, content in contents.items():
        interp = tflite.interpreter(content, num_threads=threads)
        interp.set_tensor(interp.get_input_details()[0]["index"], x[:1])
        interp.invoke()
        interps[name] = interp
    times = {name: [] for name in contents}
    for _ in range(rounds):
        for name, interp in interps.items():
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                interp.invoke()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def classifier_section(alpha, size, repeats):
    import keras

    import keras_mnv2
    from keras_mnv2 import tflite

    x = np.random.RandomState(0).uniform(-1, 1, (16, size, size, 3)).astype("float32")
    models = {
        "keras_mnv2": keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(size, size, 3)),
        "keras.applications": keras.applications.MobileNetV2(
            alpha=alpha, input_shape=(size, size, 3), weights=None
        ),
    }
    print(f"\n== MobileNetV2 {alpha}/{size}: keras_mnv2 vs keras.applications ==")
    header = f"{'model':<20} {'params':>10} {'MAdds':>8} {'predict img/s':>14} " \
             f"{'tflite ms 1T':>13} {'tflite ms 2T':>13}"
    print(header)
    print("-" * len(header))
    contents = {name: tflite.convert_float(model) for name, model in models.items()}
    lat1 = tflite_latency_ms(contents, x, 1, repeats)
    lat2 = tflite_latency_ms(contents, x, 2, repeats)
    for name, model in models.items():
        prof = keras_mnv2.profile(model)
        throughput = keras_throughput(model, x, max(1, repeats // 10))
        print(f"{name:<20} {prof.params:>10,} {prof.madds / 1e6:>7.1f}M {throughput:>14.1f} "
              f"{lat1[name]:>13.2f} {lat2[name]:>13.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--sections", default="classifier,memory,imagenet",
                        help="comma-separated: classifier, memory (issue 7), imagenet (issue 3)")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if "classifier" in sections:
        classifier_section(args.alpha, args.size, args.repeats)
    if "memory" in sections:
        from benchmarks.memory_bench import memory_bench

        print("\n== Split-expansion inverted residuals: peak activation memory and latency ==")
        memory_bench(repeats=args.repeats)
    if "imagenet" in sections and os.path.exists(os.path.join(os.path.dirname(__file__),
                                                               "imagenet_bench.py")):
        from benchmarks import imagenet_bench

        imagenet_bench.input_pipeline_bench()
        imagenet_bench.training_bench()


if __name__ == "__main__":
    main()
