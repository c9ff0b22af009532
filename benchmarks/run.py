"""``make bench``: figures printed side by side in one run (no timed tests anywhere).

Section 1: MobileNetV2 1.0/224, keras_mnv2 vs keras.applications: parameters, MAdds, Keras predict
throughput and TFLite float latency (median of repeated invocations, XNNPACK, 1 and 2 threads).
Section "latency" (benchmarks/latency_bench.py): TFLite latency of every model in every export
mode, keras.applications alongside, MAdds and achieved MAdds/s, and the issue's targets.
Section "backends" (benchmarks/backends_bench.py): training and inference img/s of MobileNetV2 and
SSDLite on the TensorFlow, JAX and torch Keras backends.
Section "peer" (benchmarks/peer_bench.py): SSDLite beside keras-cv's YOLOV8 (MobileNetV3-Small),
both trained on the embedded COCO for SSDLite's training time, and SSDLite again at the sizes whose
int8 latency brackets YOLOV8's: AP50, parameters, MAdds, int8 TFLite size and latency.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from benchmarks import latency_bench


def keras_throughput(model, x, repeats):
    model.predict(x, verbose=0)  # warm-up and tracing
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict(x, verbose=0)
    return repeats * len(x) / (time.perf_counter() - start)


def tflite_latency_ms(contents, x, threads, repeats, rounds=5):
    """Median invoke wall time (ms) of each model in ``contents`` ({name: flatbuffer}) on
    ``x[:1]``, the models timed in alternating rounds (``benchmarks.timing``)."""
    from benchmarks.timing import tflite_timings

    timings = tflite_timings(contents, threads, repeats, rounds, inputs=x[:1])
    return {name: timing.wall_ms for name, timing in timings.items()}


def classifier_section(alpha, size, repeats):
    import keras

    import keras_mnv2
    from keras_mnv2.deploy import export

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
    contents = {name: export.convert(model, output="raw") for name, model in models.items()}
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
    parser.add_argument("--sections", default="classifier,memory,latency,imagenet,backends,peer",
                        help="comma-separated: classifier, memory, latency, imagenet, backends, peer")
    parser.add_argument("--peer-wall-seconds", type=float, default=None,
                        help="peer section: each detector's training budget (default: SSDLite "
                             "trains the full embedded recipe, YOLOV8 for as long)")
    parser.add_argument("--latency-groups", default=",".join(latency_bench.GROUPS),
                        help="latency section models: mobilenet (1.0/224), small (0.35/96), "
                             "ssdlite, deeplab")
    parser.add_argument("--deeplab-size", type=int, default=513,
                        help="latency section: DeepLabV3 input side")
    parser.add_argument("--latency-budget", type=float, default=20.0,
                        help="latency section: seconds of timing per model group and thread "
                             "count (fewer than --repeats invocations for slow models)")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if "classifier" in sections:
        classifier_section(args.alpha, args.size, args.repeats)
    if "memory" in sections:
        from benchmarks.memory_bench import memory_bench

        print("\n== Split-expansion inverted residuals: peak activation memory and latency ==")
        memory_bench(repeats=args.repeats)
    if "latency" in sections:
        latency_bench.latency_bench(repeats=args.repeats, groups=args.latency_groups.split(","),
                      deeplab_size=args.deeplab_size, budget_s=args.latency_budget)
    if "imagenet" in sections and os.path.exists(os.path.join(os.path.dirname(__file__),
                                                               "imagenet_bench.py")):
        from benchmarks import imagenet_bench

        imagenet_bench.input_pipeline_bench()
        imagenet_bench.training_bench()
    if "backends" in sections:
        from benchmarks import backends_bench

        backends_bench.backends_bench()
    if "peer" in sections:
        from benchmarks import peer_bench

        peer_bench.peer_bench(wall_seconds=args.peer_wall_seconds, repeats=args.repeats)


if __name__ == "__main__":
    main()
