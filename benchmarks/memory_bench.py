"""Memory-efficient inference (paper section 5.1): split-expansion inverted residuals.

For MobileNetV2 1.0/224 and SSDLite 320 (80 classes), float32 and int8 (full-integer
post-training quantization, int8 input and output, calibrated on a few random images: enough for
memory and speed, not for accuracy), each model split with ``keras_mnv2.split.split_expansion``
at 1 (the original), 2, 3 and 6 groups per block, and at one per-block plan, prints:

- computed peak: ``keras_mnv2.profile(model, schedule="memory")`` on the Keras graph (BN, ReLU6
  and padding counted as tensors of their own, 1 byte per element for int8);
- TFLite arena: ``keras_mnv2.deploy.memory.tflite_arena_bytes``, the interpreter's tensor arena
  (built-in kernels) of the file export ships, in the memory-aware order of
  ``keras_mnv2.deploy.memory.reorder_ops`` (one group of a split block at a time); with
  ``--converter-order`` also in the converter's own op order ("arena conv"; "-" without it);
- TFLite latency of the reordered model: median over repeated invocations (default XNNPACK
  path, 1 thread, the models timed in alternating rounds), as wall time and as the invoking
  thread's CPU time (which a loaded machine disturbs less).

The per-block plan ``EARLY_SPLITS`` splits only the first blocks, whose expanded tensors bound
the peak (the stem Conv1 + block 0 into 3, block 1 into 6, block 2 into 3): the smallest counts
that halve the TFLite arena of MobileNetV2 at 224 px. Splitting costs speed (smaller
convolutions, more ops), so the later, small blocks stay whole. ``INT8_SPLITS`` (stem in 2) is
the int8 trade-off: in int8 every stem group costs about 11% of the model's time (each group's
Conv1 reads the whole 224x224x3 input again, and the partial projections are summed at
112x112), so the stem in 3 misses +20% latency; in 2 it stays near +15% but the stem then bounds
the arena at about 54% (int8 input kept alive + one 16-channel group's Conv1 and depthwise
outputs + the running sum). With the stem whole the arena stops at 58% (input + Conv1 + block 0
depthwise output), so halving the int8 arena needs the stem split in 3.

Every model is converted by ``keras_mnv2.deploy.export.convert``, the converter
``export_tflite`` writes with, so that what is measured is what ships: split models with their
projection BNs folded into the partial projections (``keras_mnv2.split.fold_projection_bn``) and
their ops reordered, int8 by the same post-training quantization (int8 input and output), with
output "raw" (the models' own outputs). The TFLite metadata that ``export_tflite`` adds is left
out: it adds a few KB of constant data and no tensor or op, so no arena or latency figure moves.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

SPLITS = (1, 2, 3, 6)
EARLY_SPLITS = (3, 6, 3) + (1,) * 14
INT8_SPLITS = (2, 6, 3) + (1,) * 14
MiB = 2 ** 20


def _plans():
    plans = {str(k): k for k in SPLITS}
    plans["3,6,3,1.."] = EARLY_SPLITS
    plans["2,6,3,1.."] = INT8_SPLITS
    return plans


def _latencies(contents, repeats, rounds=5):
    """Median wall and thread-CPU invoke times (ms) of each flatbuffer in ``contents``, at 1
    thread (``benchmarks.timing``)."""
    from benchmarks.timing import tflite_timings

    timings = tflite_timings(contents, threads=1, repeats=repeats, rounds=rounds)
    return ({name: t.wall_ms for name, t in timings.items()},
            {name: t.cpu_ms for name, t in timings.items()})


def _model_section(title, base, size, repeats, calibration, converter_order=False):
    import keras_mnv2
    from keras_mnv2.deploy import export, memory
    from keras_mnv2.split import split_expansion

    samples = np.random.RandomState(0).uniform(-1, 1, (calibration, size, size, 3))
    models = {name: base if plan == 1 else split_expansion(base, plan)
              for name, plan in _plans().items()}
    for dtype in ("float32", "int8"):
        settings = {"output": "raw"}
        if dtype == "int8":
            settings.update(mode="int8", representative_data=samples, io_dtype="int8")
        rows, contents = {}, {}
        for name, model in models.items():
            # The bytes export ships (without metadata): projection BNs folded, ops reordered.
            contents[name] = export.convert(model, **settings)
            arena = memory.tflite_arena_bytes(contents[name])
            arena_converted = arena if model is base else None
            if converter_order and model is not base:
                arena_converted = memory.tflite_arena_bytes(
                    export.convert(model, memory_order=False, **settings))
            computed = keras_mnv2.profile(model, bytes_per_element=4 if dtype == "float32" else 1,
                                          schedule="memory").peak_activation_bytes
            rows[name] = (computed, arena_converted, arena, len(memory.tflite_ops(contents[name])))
        wall, cpu = _latencies(contents, repeats)
        base_rows, base_wall, base_cpu = rows["1"], wall["1"], cpu["1"]
        for name, (computed, arena_converted, arena, ops) in rows.items():
            converted = "-" if arena_converted is None else f"{arena_converted / MiB:.2f}"
            print(f"{title:<20} {dtype:<7} {name:<10} {computed / MiB:>9.2f} "
                  f"{computed / base_rows[0]:>5.0%} {converted:>10} "
                  f"{arena / MiB:>9.2f} {arena / base_rows[2]:>5.0%} {ops:>4} "
                  f"{wall[name]:>8.2f} {wall[name] / base_wall:>5.0%} "
                  f"{cpu[name]:>8.2f} {cpu[name] / base_cpu:>5.0%}", flush=True)


def memory_bench(mobilenet_size=224, ssd_size=320, alpha=1.0, repeats=100, calibration=4,
                 converter_order=False):
    """Prints the section's table (see the module docstring); takes several minutes."""
    import keras_mnv2

    print("\n== Memory-efficient inference (paper section 5.1): split-expansion blocks ==")
    print("computed: profile(schedule='memory') of the Keras graph; arena: TFLite tensor arena "
          "of the file export.convert ships (memory-aware order; 'arena conv': the converter's "
          "own order, with --converter-order); latency: the shipped file, 1 thread")
    header = (f"{'model':<20} {'dtype':<7} {'splits':<10} {'computed':>9} {'':>5} "
              f"{'arena conv':>10} {'arena':>9} {'':>5} {'ops':>4} {'wall ms':>8} {'':>5} "
              f"{'cpu ms':>8} {'':>5}")
    print(header)
    print(f"{'':<39} {'MiB':>9} {'vs 1':>5} {'MiB':>10} {'MiB':>9} {'vs 1':>5} {'':>4} "
          f"{'':>8} {'vs 1':>5} {'':>8} {'vs 1':>5}")
    print("-" * len(header))
    classifier = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=(mobilenet_size,) * 2 + (3,))
    _model_section(f"MobileNetV2 {alpha}/{mobilenet_size}", classifier, mobilenet_size, repeats,
                   calibration, converter_order)
    detector = keras_mnv2.SSDLite(80, alpha=alpha, input_size=ssd_size)
    _model_section(f"SSDLite {ssd_size}", detector, ssd_size, repeats, calibration,
                   converter_order)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--mobilenet-size", type=int, default=224)
    parser.add_argument("--ssd-size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--calibration", type=int, default=4,
                        help="random images that calibrate the int8 conversion")
    parser.add_argument("--converter-order", action="store_true",
                        help="also convert each split model in the converter's own op order and "
                             "print its arena (column 'arena conv'; one more conversion each)")
    args = parser.parse_args(argv)
    memory_bench(args.mobilenet_size, args.ssd_size, args.alpha, args.repeats, args.calibration,
                 args.converter_order)


if __name__ == "__main__":
    main()
