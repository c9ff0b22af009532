"""TFLite latency of the three models in every export mode, keras.applications alongside.

Paper section 6 reports every model with its multiply-adds and its mobile CPU latency; this is
that table for TFLite on the machine at hand. Each model is converted with
``keras_mnv2.deploy.export.convert`` in modes float32, float16, dynamic and int8 (full-integer
post-training quantization by the TFLite converter, calibrated on a few random images: right for
speed, not for accuracy), int8_litert (the float32 file quantized by LiteRT Quantizer's static
int8 recipe, ``export.litert_quantize``, on the same images) and, for keras_mnv2's models,
qat_keras (``keras_qat.quantize_keras`` calibrated on the same images, untrained, exported in
mode qat: the file a Keras 3 QAT run gives), float32 input and outputs; ``keras.applications.MobileNetV2`` (weights=None) goes
through the very same converter path (``export.convert`` takes any single-output Keras
classifier: its softmax output is exported as "probabilities", as ours), both with the same
random weights (``keras_mnv2.copy_weights``), so that only the graphs differ, not the values
(which set the int8 ranges).

Models (groups; the models of a group, all modes, are timed side by side in alternating rounds,
so that drift in machine load hits them alike):
  MobileNetV2 1.0/224 and 0.35/96, 1000 classes: keras_mnv2 and keras.applications;
  SSDLite 320, alpha 1.0, 80 classes: raw outputs (box encodings and class logits), and with the
      ``TFLite_Detection_PostProcess`` op appended (float32 and int8 only: the op computes in
      float in every mode);
  DeepLabV3, 21 classes, alpha 1.0, output stride 16, no ASPP (the paper's mobile configuration,
      Table 7), logits at the input size (513 px by default).

For each model and mode: median wall time of one invocation at 1 and 2 threads (default
interpreter path, ``keras_mnv2.deploy.tflite.interpreter``: XNNPACK), CPU time (which a loaded machine
disturbs less; see ``benchmarks.timing``), MAdds (``keras_mnv2.profile``: the Keras model's,
without softmax or the post-process op) and achieved multiply-adds per second (MAdds / median
wall time), and how XNNPACK took the graph (delegated partitions, ops left to the built-in
kernels). Then the targets, computed from the figures: keras_mnv2 no slower than
keras.applications at equal alpha and resolution in each mode, and int8 at most 0.6x the
float32 latency at 1 thread.
"""

import argparse
import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

MODES = ("float32", "float16", "dynamic", "int8", "int8_litert")
QAT_MODE = "qat_keras"  # keras_mnv2 models only (keras_qat rewrites keras_mnv2's layer patterns)
ALL_MODES = MODES + (QAT_MODE,)
INT8_MODES = ("int8", "int8_litert", QAT_MODE)
THREADS = (1, 2)
INT8_TARGET = 0.6  # int8 latency / float32 latency at 1 thread
OURS, THEIRS = "keras_mnv2", "keras.applications"
GROUPS = ("mobilenet", "small", "ssdlite", "deeplab")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model of a group: its row name, the Keras model, the export output, its modes."""

    name: str
    model: object
    output: str = "auto"
    modes: tuple = MODES


@dataclasses.dataclass(frozen=True)
class LatencyRow:
    """One model in one mode: what was converted and how fast it ran."""

    group: str
    name: str
    mode: str
    output: str
    madds: int
    size_bytes: int
    convert_s: float
    timings: dict  # threads -> benchmarks.timing.Timing
    delegates: int  # XNNPACK partitions
    outside: dict  # op name -> count of the ops XNNPACK left to the built-in kernels
    ops: tuple  # the flatbuffer's op names in execution order (without delegates)
    builtin_error: str = ""  # why the built-in kernels refuse the file ("": they run it)

    def ms(self, threads=1):
        return self.timings[threads].wall_ms

    def cpu_ms(self, threads=1):
        return self.timings[threads].cpu_ms

    def madds_per_s(self, threads=1, cpu=False):
        """Achieved multiply-adds per second: MAdds / median wall (or CPU) time."""
        return self.madds / ((self.cpu_ms(threads) if cpu else self.ms(threads)) / 1e3)


def xnnpack_partitions(content, threads=1):
    """How the default XNNPACK delegate takes a flatbuffer: (number of delegated partitions,
    {op name: count} of the ops left outside, run by the built-in kernels).

    The interpreter keeps the original nodes next to the delegate nodes; a partition's original
    ops are those reached backwards from its outputs without crossing its inputs.
    """
    from keras_mnv2.deploy import tflite

    ops = tflite.interpreter(content, num_threads=threads)._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {t: i for i, op in enumerate(originals) for t in op["outputs"]}
    taken = set()
    for delegate in delegates:
        boundary = set(int(t) for t in delegate["inputs"])
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            i = producer.get(stack.pop())
            if i is None or i in taken:
                continue
            taken.add(i)
            stack.extend(int(t) for t in originals[i]["inputs"] if t >= 0 and t not in boundary)
    outside = {}
    for i, op in enumerate(originals):
        if i not in taken:
            outside[op["op_name"]] = outside.get(op["op_name"], 0) + 1
    return len(delegates), outside


def latency_rows(group, candidates, threads=THREADS, repeats=50, rounds=5, calibration=4,
                 budget_s=None, log=None):
    """Converts every candidate in each of its modes and times them all side by side.

    Args:
        group: the group's title (the rows' ``group``).
        candidates: ``Candidate`` s (distinct names).
        threads: the interpreter thread counts to time at.
        repeats, rounds, budget_s: invocations per model, alternating rounds, and the time
            budget of one thread count (see ``benchmarks.timing.tflite_timings``).
        calibration: random images [-1, 1] that calibrate the int8 conversion.
        log: optional callable taking a progress line.
    Returns ``LatencyRow`` s, in mode order, the candidates' order within a mode.
    """
    import keras_mnv2
    from benchmarks.timing import tflite_timings

    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be distinct, got {names}")
    for candidate in candidates:
        unknown = set(candidate.modes) - set(ALL_MODES)
        if unknown:
            raise ValueError(f"{candidate.name}: unknown modes {sorted(unknown)}; choose from "
                             f"{ALL_MODES}")
    madds, contents, converted = {}, {}, {}
    for mode in ALL_MODES:
        for candidate in candidates:
            if mode not in candidate.modes:
                continue
            model = candidate.model
            if id(model) not in madds:
                madds[id(model)] = keras_mnv2.profile(model).madds
            samples = None
            if mode in INT8_MODES:
                shape = tuple(model.input_shape[1:])
                samples = np.random.RandomState(0).uniform(-1, 1, (calibration, *shape))
            start = time.perf_counter()
            content = _convert(model, mode, samples, candidate.output)
            seconds = time.perf_counter() - start
            if log:
                log(f"  converted {group} {candidate.name} {mode} in {seconds:.0f} s")
            key = (candidate.name, mode)
            contents[key] = content
            converted[key] = (candidate, seconds)
    timings = {}
    for n in threads:
        start = time.perf_counter()
        timed = tflite_timings({f"{name}/{mode}": content
                                for (name, mode), content in contents.items()},
                               threads=n, repeats=repeats, rounds=rounds, budget_s=budget_s)
        if log:
            log(f"  timed {len(contents)} models at {n} thread(s) in "
                f"{time.perf_counter() - start:.0f} s")
        for (name, mode) in contents:
            timings.setdefault((name, mode), {})[n] = timed[f"{name}/{mode}"]
    rows = []
    for key, content in contents.items():
        candidate, seconds = converted[key]
        delegates, outside = xnnpack_partitions(content)
        ops, builtin_error = _op_names(content)
        rows.append(LatencyRow(group=group, name=candidate.name, mode=key[1],
                               output=candidate.output, madds=madds[id(candidate.model)],
                               size_bytes=len(content), convert_s=seconds, timings=timings[key],
                               delegates=delegates, outside=outside, ops=ops,
                               builtin_error=builtin_error))
    return rows


def _convert(model, mode, samples, output):
    """The bytes ``export.convert`` (the converter export ships through) gives for a bench
    mode; metadata is left out (export_tflite adds it to these bytes: it adds a few KB and no
    op)."""
    from keras_mnv2.deploy import export

    if mode == "int8_litert":
        return export.convert(model, mode="int8", representative_data=samples, output=output,
                              quantizer="litert")
    if mode == QAT_MODE:
        from keras_mnv2.deploy import keras_qat

        qat_model = keras_qat.quantize_keras(model, calibration_data=samples.astype("float32"),
                                             log=None)
        return export.convert(qat_model, mode="qat", output=output)
    return export.convert(model, mode=mode, representative_data=samples, output=output)


def _op_names(content):
    """(op names in execution order, "" or why the built-in kernels refuse the file). LiteRT
    Quantizer's file of an untrained model can hold scales that the built-in int8 kernels reject
    (XNNPACK runs it): its op names then come from the delegated interpreter's original nodes."""
    from keras_mnv2.deploy import tflite

    try:
        return tuple(op for op, _ in tflite.op_details(content)), ""
    except RuntimeError as err:
        ops = tflite.interpreter(content)._get_ops_details()
        return (tuple(op["op_name"] for op in ops if op["op_name"] != "DELEGATE"),
                str(err).strip().splitlines()[0])


# ----------------------------------------------------------------------------------------------
# Targets, computed from the rows


def sign_test_p(won, rounds):
    """Two-sided sign-test p-value of ``won`` wins in ``rounds`` rounds under equal speed: how
    often two equally fast models split the rounds at least this unevenly."""
    import math

    low = min(won, rounds - won)
    tail = sum(math.comb(rounds, k) for k in range(low + 1)) / 2 ** rounds
    return min(1.0, 2 * tail)


def _ratio_text(ratio, limit):
    return f"{ratio:.2f}x {'holds' if ratio <= limit else 'FAILS'}"


def int8_checks(rows, limit=INT8_TARGET, mode="int8"):
    """[(group, name, wall ratio, cpu ratio)]: ``mode`` / float32 median latency at 1 thread,
    for every model converted in both modes (the target is on the converter's int8)."""
    by_key = {(r.group, r.name, r.mode): r for r in rows}
    checks = []
    for r in rows:
        if r.mode == mode and (r.group, r.name, "float32") in by_key:
            base = by_key[(r.group, r.name, "float32")]
            checks.append((r.group, r.name, r.ms(1) / base.ms(1), r.cpu_ms(1) / base.cpu_ms(1)))
    return checks


@dataclasses.dataclass(frozen=True)
class PairCheck:
    """``ours`` against ``theirs`` in one group, mode and thread count: ratios of the median
    latencies (<= 1: ours no slower), and in how many of the alternating rounds ours had the
    lower round median (a sign test: identical graphs win about half)."""

    group: str
    mode: str
    threads: int
    wall: float
    cpu: float
    wall_rounds_won: int
    cpu_rounds_won: int
    rounds: int
    same_ops: bool  # the two flatbuffers run the same ops in the same order


def pair_checks(rows, ours=OURS, theirs=THEIRS):
    """``PairCheck`` s of ``ours`` / ``theirs`` wherever a group has both in a mode."""
    by_key = {(r.group, r.name, r.mode): r for r in rows}
    checks = []
    for r in rows:
        other = by_key.get((r.group, theirs, r.mode))
        if r.name != ours or other is None:
            continue
        for n in sorted(set(r.timings) & set(other.timings)):
            mine, base = r.timings[n], other.timings[n]
            checks.append(PairCheck(
                group=r.group, mode=r.mode, threads=n, wall=mine.wall_ms / base.wall_ms,
                cpu=mine.cpu_ms / base.cpu_ms,
                wall_rounds_won=sum(a <= b for a, b in zip(mine.round_wall_ms,
                                                           base.round_wall_ms)),
                cpu_rounds_won=sum(a <= b for a, b in zip(mine.round_cpu_ms, base.round_cpu_ms)),
                rounds=len(mine.round_wall_ms), same_ops=r.ops == other.ops))
    return checks


def target_lines(rows, limit=INT8_TARGET):
    """The targets' verdicts as text lines, computed from ``rows``."""
    lines = []
    pairs = pair_checks(rows)
    if pairs:
        lines.append(f"Target: {OURS} no slower than {THEIRS} (same alpha, resolution, mode; "
                     "ratio of median latencies, <= 1 holds; won: rounds in which ours was "
                     "no slower; p: sign test of the rounds against equal speed)")

        def part(label, ratio, won, rounds):
            return (f"{label} {_ratio_text(ratio, 1.0)} "
                    f"(won {won}/{rounds}, p={sign_test_p(won, rounds):.2f})")

        for p in pairs:
            lines.append(f"  {p.group:<22} {p.mode:<8} {p.threads}T  "
                         f"{part('wall', p.wall, p.wall_rounds_won, p.rounds)}  "
                         f"{part('cpu', p.cpu, p.cpu_rounds_won, p.rounds)}"
                         f"{'' if p.same_ops else '  (different ops)'}")
        same = sum(p.same_ops for p in pairs)
        slower = sum(p.cpu > 1 and p.cpu_rounds_won < p.rounds / 2
                     and sign_test_p(p.cpu_rounds_won, p.rounds) < 0.05 for p in pairs)
        lines.append(f"  holds in {sum(p.wall <= 1 for p in pairs)}/{len(pairs)} by wall time, "
                     f"{sum(p.cpu <= 1 for p in pairs)}/{len(pairs)} by CPU time; "
                     f"{OURS} slower in most rounds at p < 0.05 (CPU time) in "
                     f"{slower}/{len(pairs)}; the two flatbuffers run the same ops in the same "
                     f"order in {same}/{len(pairs)}")
    checks = int8_checks(rows, limit)
    if checks:
        lines.append(f"Target: int8 <= {limit}x float32 latency at 1 thread")
        for group, name, wall, cpu in checks:
            lines.append(f"  {group:<22} {name:<20} wall {_ratio_text(wall, limit)}  "
                         f"cpu {_ratio_text(cpu, limit)}")
        lines.append(f"  holds in {sum(c[2] <= limit for c in checks)}/{len(checks)} by wall "
                     f"time, {sum(c[3] <= limit for c in checks)}/{len(checks)} by CPU time")
    return lines


# ----------------------------------------------------------------------------------------------
# Printing


def table_lines(rows, threads=THREADS):
    """The rows as a text table (one line per model and mode)."""
    int8 = {(g, n, m): wall for m in INT8_MODES
            for g, n, wall, _ in int8_checks(rows, mode=m)}
    times = "".join(f" {f'{n}T ms':>8} {f'{n}T cpu':>8}" for n in threads)
    rates = "".join(f" {f'G/s {n}T':>8}" for n in threads) + f" {'G/s cpu':>8}"
    header = (f"{'model':<20} {'mode':<11} {'MAdds':>7} {'MB':>6} {'XNNPACK':>8}{times}{rates} "
              f"{'int8/f32':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = "".join(f" {r.ms(n):>8.2f} {r.cpu_ms(n):>8.2f}" for n in threads)
        cells += "".join(f" {r.madds_per_s(n) / 1e9:>8.1f}" for n in threads)
        cells += f" {r.madds_per_s(threads[0], cpu=True) / 1e9:>8.1f}"
        ratio = int8.get((r.group, r.name, r.mode))
        xnn = f"{r.delegates}/{sum(r.outside.values())}"
        lines.append(f"{r.name:<20} {r.mode:<11} {r.madds / 1e6:>6.0f}M "
                     f"{r.size_bytes / 1e6:>6.2f} {xnn:>8}{cells} "
                     f"{'' if ratio is None else f'{ratio:.2f}x':>8}")
    outside = [(r, ", ".join(f"{op} x{k}" for op, k in sorted(r.outside.items())))
               for r in rows if r.outside]
    for r, ops in outside:
        lines.append(f"  {r.name} {r.mode}: not delegated: {ops}")
    for r in rows:
        if r.builtin_error:
            lines.append(f"  {r.name} {r.mode}: the built-in kernels refuse it (timed with "
                         f"XNNPACK): {r.builtin_error}")
    return lines


def _groups(selected, deeplab_size):
    """(title, builder of the candidates) of each selected group, built only when timed."""
    import keras

    import keras_mnv2

    def mobilenets(alpha, size):
        def build():
            shape = (size, size, 3)
            theirs = keras.applications.MobileNetV2(alpha=alpha, input_shape=shape, weights=None)
            ours = keras_mnv2.MobileNetV2(alpha=alpha, input_shape=shape)
            keras_mnv2.copy_weights(theirs, ours)  # the same values: only the graphs differ
            return [Candidate(OURS, ours, modes=ALL_MODES), Candidate(THEIRS, theirs)]
        return build

    def ssdlite():
        model = keras_mnv2.SSDLite(80, alpha=1.0, input_size=320)
        return [Candidate(f"{OURS} raw", model, output="raw", modes=ALL_MODES),
                Candidate(f"{OURS} +NMS", model, output="detections",
                          modes=("float32", "int8", "int8_litert", QAT_MODE))]

    def deeplab():
        model = keras_mnv2.DeepLabV3(21, alpha=1.0, input_shape=(deeplab_size, deeplab_size, 3),
                                     output_stride=16, aspp=False)
        return [Candidate(OURS, model, modes=ALL_MODES)]

    table = {
        "mobilenet": ("MobileNetV2 1.0/224", mobilenets(1.0, 224)),
        "small": ("MobileNetV2 0.35/96", mobilenets(0.35, 96)),
        "ssdlite": ("SSDLite 320 a1.0 80cls", ssdlite),
        "deeplab": (f"DeepLabV3 OS16 {deeplab_size}px", deeplab),
    }
    unknown = [g for g in selected if g not in table]
    if unknown:
        raise ValueError(f"unknown latency groups {unknown}; choose from {GROUPS}")
    return [table[g] for g in selected]


def latency_bench(repeats=200, rounds=10, threads=THREADS, groups=GROUPS, deeplab_size=513,
                  budget_s=20.0, calibration=4):
    """Prints the section (see the module docstring); returns its rows."""
    def log(line):
        print(line, flush=True)

    print(f"\n== TFLite latency (XNNPACK, median of up to {repeats} invocations in {rounds} "
          f"alternating rounds, {'/'.join(map(str, threads))} threads) ==")
    print("ms: median wall time; cpu: CPU time (invoking thread at 1T, process at more); "
          f"G/s: GMAdds per second (MAdds / wall ms; cpu: / {threads[0]}T cpu ms); XNNPACK: delegated partitions / ops left "
          "outside; MB: flatbuffer size")
    print(f"DeepLabV3: 21 classes, alpha 1.0, output stride 16, no ASPP, at {deeplab_size} px; "
          f"SSDLite +NMS: with TFLite_Detection_PostProcess (MAdds without it)")
    all_rows = []
    start = time.perf_counter()
    for title, build in _groups(list(groups), deeplab_size):
        rows = latency_rows(title, build(), threads=threads, repeats=repeats, rounds=rounds,
                            calibration=calibration, budget_s=budget_s, log=log)
        invocations = sorted({t.invocations for r in rows for t in r.timings.values()})
        print(f"\n-- {title} ({'/'.join(map(str, invocations))} invocations each) --")
        for line in table_lines(rows, threads):
            print(line)
        all_rows.extend(rows)
    print()
    for line in target_lines(all_rows):
        print(line)
    print(f"(section wall time {time.perf_counter() - start:.0f} s)", flush=True)
    return all_rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--deeplab-size", type=int, default=513)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timing per group and thread count")
    args = parser.parse_args(argv)
    latency_bench(args.repeats, args.rounds, groups=args.groups.split(","),
                  deeplab_size=args.deeplab_size, budget_s=args.budget)


if __name__ == "__main__":
    main()
