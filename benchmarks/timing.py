"""TFLite invoke timing shared by the benchmarks (``run``, ``memory_bench``, ``latency_bench``).

Several flatbuffers are timed side by side: one interpreter each (``keras_mnv2.deploy.tflite.interpreter``,
the default XNNPACK path), warmed up by two invocations, then invoked in alternating rounds (a few
invocations of each model per round) so that drift in machine load hits them all alike; the order
is rotated by one model each round, as a model's place in a round shifts its time by a few
percent. Each invocation is timed as wall time and as CPU time: the invoking thread's at 1 thread,
the whole process's (all interpreter threads) at more; CPU time is the figure a loaded machine
disturbs less.
"""

import dataclasses
import math
import statistics
import time

import numpy as np

from keras_mnv2.deploy.tflite import sample_input


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median times (ms) of one invocation, overall and per round."""

    wall_ms: float
    cpu_ms: float
    invocations: int
    round_wall_ms: tuple
    round_cpu_ms: tuple


def tflite_timings(contents, threads=1, repeats=100, rounds=5, inputs=None, budget_s=None):
    """Times each flatbuffer of ``contents`` ({name: bytes}); returns {name: Timing}.

    Args:
        threads: the interpreters' ``num_threads``.
        repeats: invocations of each model (split over ``rounds`` rounds, at least one a round).
        inputs: None (random inputs, ``keras_mnv2.deploy.tflite.sample_input``), one array for
            every model, or {name: array}; each model's first input is set once, before the
            warm-up.
        budget_s: if given, fewer invocations where ``repeats`` of every model would take longer
            than this (estimated from the warm-up), but never fewer than one a round.
    """
    from keras_mnv2.deploy import tflite

    if not contents:
        raise ValueError("no models to time")
    if repeats < 1 or rounds < 1:
        raise ValueError(f"repeats and rounds must be >= 1, got {repeats} and {rounds}")
    interps, warm = {}, {}
    for name, content in contents.items():
        interp = tflite.interpreter(content, num_threads=threads)
        detail = interp.get_input_details()[0]
        x = inputs.get(name) if isinstance(inputs, dict) else inputs
        x = sample_input(detail) if x is None else np.asarray(x, detail["dtype"])
        interp.set_tensor(detail["index"], x)
        start = time.perf_counter()
        interp.invoke()  # warm-up: XNNPACK packs weights and sets up on the first invocation
        interp.invoke()
        warm[name] = time.perf_counter() - start
        interps[name] = interp
    per_round = max(1, math.ceil(repeats / rounds))
    if budget_s is not None:
        seconds_per_round = sum(warm.values()) / 2
        per_round = max(1, min(per_round, int(budget_s / rounds / seconds_per_round)))
    cpu_clock = time.thread_time if threads == 1 else time.process_time
    wall = {name: [[] for _ in range(rounds)] for name in contents}
    cpu = {name: [[] for _ in range(rounds)] for name in contents}
    names = list(interps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            interp = interps[name]
            for _ in range(per_round):
                start_wall, start_cpu = time.perf_counter(), cpu_clock()
                interp.invoke()
                cpu[name][r].append((cpu_clock() - start_cpu) * 1e3)
                wall[name][r].append((time.perf_counter() - start_wall) * 1e3)

    def median(per_round_values):
        return statistics.median(v for values in per_round_values for v in values)

    return {name: Timing(wall_ms=median(wall[name]), cpu_ms=median(cpu[name]),
                         invocations=rounds * per_round,
                         round_wall_ms=tuple(statistics.median(v) for v in wall[name]),
                         round_cpu_ms=tuple(statistics.median(v) for v in cpu[name]))
            for name in contents}
