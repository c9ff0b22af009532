"""``make bench`` section "backends": training and inference img/s of MobileNetV2 and
SSDLite on the TensorFlow, JAX and torch Keras backends, side by side.

KERAS_BACKEND is fixed at import, so each backend runs in its own subprocess
(``python -m benchmarks.backends_bench --worker``), each with Keras' defaults for that backend
(``jit_compile="auto"``: XLA on JAX; graph mode without XLA on a CPU-only TensorFlow; eager
torch). The backends run in alternating rounds and the best round counts, so that drift in the
machine's load hits them all alike. Training is ``fit`` from a tf.data pipeline (the loss the
jobs use), inference is ``predict`` on numpy batches; both after a warm-up that traces/compiles.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
# (name, builder arguments, batch): the MobileNetV2 0.35/128 at batch 32, and SSDLite.
CASES = (
    ("MobileNetV2 0.35/128", "mobilenet_v2", 32),
    ("SSDLite 0.35/192", "ssdlite", 16),
)


def _case(kind):
    import keras_mnv2
    from keras_mnv2.detection.losses import ssd_losses

    if kind == "mobilenet_v2":
        model = keras_mnv2.MobileNetV2(alpha=0.35, input_shape=(128, 128, 3), classes=1000)
        return model, "sparse_categorical_crossentropy", 128
    model = keras_mnv2.SSDLite(90, alpha=0.35, input_size=192)
    return model, ssd_losses(), 192


def _targets(kind, model, batch, rng):
    import numpy as np

    if kind == "mobilenet_v2":
        return rng.randint(0, 1000, (batch,)).astype("int32")
    n = model.anchors.shape[0]
    classes = np.where(rng.uniform(size=(batch, n)) < 0.02, rng.randint(1, 91, (batch, n)), 0)
    boxes = np.concatenate([rng.normal(size=(batch, n, 4)),
                            classes[..., None].astype("float64")], axis=-1)
    return {"boxes": boxes.astype("float32"), "classes": classes.astype("int32")}


def worker(kind, batch, steps):
    """One backend, one model: prints a JSON line {train, infer} in img/s."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model, loss, size = _case(kind)
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32")
    y = _targets(kind, model, batch, rng)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss=loss)
    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)  # trace / compile
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    train = steps * batch / (time.perf_counter() - start)
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        keras.ops.convert_to_numpy(keras.tree.flatten(model.predict_on_batch(x))[0])
    infer = steps * batch / (time.perf_counter() - start)
    print(json.dumps({"train": train, "infer": infer}))


def _run_worker(backend, kind, batch, steps):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "benchmarks.backends_bench", "--worker", kind,
                           "--batch", str(batch), "--steps", str(steps)],
                          env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        raise RuntimeError(f"{backend} {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def backends_bench(steps=8, rounds=2):
    """Prints one table: img/s per backend, training and inference, best of ``rounds``."""
    backends = [b for b in BACKENDS
                if b == "tensorflow" or importlib.util.find_spec(b) is not None]
    missing = sorted(set(BACKENDS) - set(backends))
    print(f"\n== Keras backends on this CPU ({os.cpu_count()} cores): img/s, best of {rounds} "
          f"alternating rounds, {steps} timed steps ==")
    if missing:
        print(f"(not installed, left out: {', '.join(missing)})")
    results = {}
    for r in range(rounds):
        for name, kind, batch in CASES:
            order = backends[r % len(backends):] + backends[:r % len(backends)]
            for backend in order:
                got = _run_worker(backend, kind, batch, steps)
                best = results.setdefault((name, backend), {"train": 0.0, "infer": 0.0})
                for key in best:
                    best[key] = max(best[key], got[key])
    header = f"{'model':<22} {'batch':>5}" + "".join(
        f" {b + ' train':>14}" for b in backends) + "".join(
        f" {b + ' infer':>14}" for b in backends)
    print(header)
    print("-" * len(header))
    for name, _, batch in CASES:
        row = f"{name:<22} {batch:>5}"
        row += "".join(f" {results[(name, b)]['train']:>14.1f}" for b in backends)
        row += "".join(f" {results[(name, b)]['infer']:>14.1f}" for b in backends)
        print(row)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", default=None, choices=[kind for _, kind, _ in CASES])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.batch, args.steps)
    else:
        backends_bench(args.steps, args.rounds)


if __name__ == "__main__":
    main()
