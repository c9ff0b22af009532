"""The latency section of ``make bench`` (benchmarks/latency_bench.py) on tiny models: structure
and the figures that follow from others (no timing assertions)."""

import dataclasses

import pytest

from benchmarks import latency_bench as lb
from benchmarks.timing import Timing, tflite_timings

ALPHA, SIZE = 0.35, 96


def _timing(ms, cpu=None, rounds=(1.0, 1.0)):
    cpu = ms if cpu is None else cpu
    return Timing(wall_ms=ms, cpu_ms=cpu, invocations=2,
                  round_wall_ms=tuple(ms * r for r in rounds),
                  round_cpu_ms=tuple(cpu * r for r in rounds))


def _row(name, mode, ms, cpu=None, group="g", madds=1_000_000, rounds=(1.0, 1.0),
         ops=("CONV_2D",)):
    return lb.LatencyRow(group=group, name=name, mode=mode, output="auto", madds=madds,
                         size_bytes=1, convert_s=0.0,
                         timings={1: _timing(ms, cpu, rounds), 2: _timing(ms / 2, cpu, rounds)},
                         delegates=1, outside={}, ops=ops)


def test_targets_are_computed_from_the_rows():
    rows = [_row(lb.OURS, "float32", 10.0), _row(lb.THEIRS, "float32", 12.5, cpu=8.0),
            _row(lb.OURS, "int8", 5.0),
            _row(lb.THEIRS, "int8", 7.0, rounds=(0.5, 2.0), ops=("CONV_2D", "SOFTMAX"))]
    pairs = lb.pair_checks(rows)
    assert [(p.mode, p.threads) for p in pairs] == [("float32", 1), ("float32", 2), ("int8", 1),
                                                    ("int8", 2)]
    assert pairs[0].wall == pytest.approx(10.0 / 12.5) and pairs[0].cpu == pytest.approx(1.25)
    assert (pairs[0].wall_rounds_won, pairs[0].cpu_rounds_won, pairs[0].rounds) == (2, 0, 2)
    # ours 5 ms in both rounds; theirs 3.5 ms, then 14 ms: ours won one round of two.
    assert (pairs[2].wall_rounds_won, pairs[2].rounds) == (1, 2)
    assert [p.same_ops for p in pairs] == [True, True, False, False]
    checks = lb.int8_checks(rows)
    assert [(c[1], round(c[2], 4)) for c in checks] == [(lb.OURS, 0.5), (lb.THEIRS, 0.56)]
    text = "\n".join(lb.target_lines(rows))
    assert "float32  1T  wall 0.80x holds (won 2/2, p=0.50)  cpu 1.25x FAILS (won 0/2, p=0.50)\n" \
        in text
    assert "int8     1T  wall 0.71x holds (won 1/2, p=1.00)  cpu 0.71x holds (won 1/2, p=1.00)" \
        "  (different ops)" in text
    # Two rounds can never make a loss significant at 0.05.
    assert "holds in 4/4 by wall time, 3/4 by CPU time; keras_mnv2 slower in most rounds at " \
        "p < 0.05 (CPU time) in 0/4; the two flatbuffers run the same ops in the same order " \
        "in 2/4" in text
    assert f"{lb.THEIRS:<20} wall 0.56x holds" in text
    # The same int8 model 0.7x the float latency misses the 0.6x target.
    slow = [_row(lb.OURS, "float32", 10.0), _row(lb.OURS, "int8", 7.0)]
    assert "wall 0.70x FAILS" in "\n".join(lb.target_lines(slow))
    assert not lb.pair_checks(slow)
    # the LiteRT Quantizer and Keras QAT files get their ratio to float32 in the table
    lines = lb.table_lines(slow + [_row(lb.OURS, "int8_litert", 6.0),
                                   _row(lb.OURS, lb.QAT_MODE, 5.5)])
    assert [line.split()[-1] for line in lines[-3:]] == ["0.70x", "0.60x", "0.55x"]


def test_sign_test():
    assert lb.sign_test_p(5, 10) == 1.0
    assert lb.sign_test_p(1, 10) == pytest.approx(2 * 11 / 1024)
    assert lb.sign_test_p(10, 10) == lb.sign_test_p(0, 10) == pytest.approx(2 / 1024)


def test_madds_per_second_is_madds_over_the_median_latency():
    row = _row(lb.OURS, "float32", 4.0, cpu=3.0, madds=300_000_000)
    assert row.madds_per_s(1) == pytest.approx(300e6 / 4e-3)
    assert row.madds_per_s(2) == pytest.approx(300e6 / 2e-3)
    assert row.madds_per_s(1, cpu=True) == pytest.approx(300e6 / 3e-3)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        lb.latency_rows("g", [lb.Candidate("a", None), lb.Candidate("a", None)])
    with pytest.raises(ValueError, match="unknown modes"):
        lb.latency_rows("g", [lb.Candidate("a", None, modes=("float32", "qat"))])
    with pytest.raises(ValueError, match="repeats and rounds"):
        tflite_timings({"a": b""}, repeats=0)
    with pytest.raises(ValueError, match="unknown latency groups"):
        lb._groups(["mobilenet", "resnet"], 513)


@pytest.fixture(scope="module")
def tiny():
    import keras

    import keras_mnv2

    shape = (SIZE, SIZE, 3)
    models = {lb.OURS: keras_mnv2.MobileNetV2(alpha=ALPHA, input_shape=shape),
              lb.THEIRS: keras.applications.MobileNetV2(alpha=ALPHA, input_shape=shape,
                                                         weights=None)}
    rows = lb.latency_rows("tiny", [lb.Candidate(name, m) for name, m in models.items()],
                           threads=(1, 2), repeats=4, rounds=2, calibration=2)
    return models, rows


@pytest.mark.slow
def test_latency_rows_on_tiny_models(tiny):
    import keras_mnv2

    models, rows = tiny
    assert [(r.name, r.mode) for r in rows] == [(name, mode) for mode in lb.MODES
                                                for name in (lb.OURS, lb.THEIRS)]
    madds = {name: keras_mnv2.profile(m).madds for name, m in models.items()}
    assert madds[lb.OURS] == madds[lb.THEIRS] > 0  # the same architecture
    by_key = {(r.name, r.mode): r for r in rows}
    for r in rows:
        assert r.madds == madds[r.name]
        assert set(r.timings) == {1, 2}
        for n, t in r.timings.items():
            assert t.wall_ms > 0 and t.cpu_ms >= 0 and t.invocations == 4
            assert len(t.round_wall_ms) == len(t.round_cpu_ms) == 2
            assert min(t.round_wall_ms) <= t.wall_ms <= max(t.round_wall_ms)
            assert r.madds_per_s(n) == pytest.approx(r.madds / (t.wall_ms / 1e3))
        assert r.delegates >= 1
        # int8 and dynamic store int8 weights, float16 half-width ones.
        ratio = r.size_bytes / by_key[(r.name, "float32")].size_bytes
        assert ratio < {"float32": 1.01, "float16": 0.55, "dynamic": 0.35, "int8": 0.35,
                         "int8_litert": 0.35}[r.mode]
    # The float32 model runs in one XNNPACK partition, nothing left outside.
    assert (by_key[(lb.OURS, "float32")].delegates, by_key[(lb.OURS, "float32")].outside) \
        == (1, {})
    pairs = lb.pair_checks(rows)
    assert sorted((p.mode, p.threads) for p in pairs) == sorted((m, n) for m in lb.MODES
                                                                for n in (1, 2))
    for p in pairs:
        ours, theirs = by_key[(lb.OURS, p.mode)], by_key[(lb.THEIRS, p.mode)]
        assert p.wall == pytest.approx(ours.ms(p.threads) / theirs.ms(p.threads))
        assert p.same_ops == (ours.ops == theirs.ops)
        assert 0 <= p.wall_rounds_won <= p.rounds == 2
    # Same architecture, same converter path: the same TFLite graph op for op.
    assert all(p.same_ops for p in pairs)
    lines = lb.table_lines(rows)
    assert len([line for line in lines if line.startswith(lb.OURS)]) == len(lb.MODES)


@pytest.mark.slow
def test_partitions_and_time_budget(tiny):
    from keras_mnv2.deploy import export, tflite

    models, _ = tiny
    content = export.convert(models[lb.OURS], mode="dynamic")
    delegates, outside = lb.xnnpack_partitions(content)
    counts = tflite.op_counts(content)
    assert delegates >= 1
    assert all(0 < k <= counts[op] for op, k in outside.items())
    assert sum(outside.values()) < sum(counts.values())
    timed = tflite_timings({"a": content, "b": content}, repeats=100, rounds=3, budget_s=1e-9)
    assert [t.invocations for t in timed.values()] == [3, 3]


def test_a_consistent_loss_is_reported_as_significant():
    rounds = (1.0,) * 10
    rows = [_row(lb.OURS, "int8", 10.0, rounds=rounds), _row(lb.THEIRS, "int8", 9.0, rounds=rounds)]
    text = "\n".join(lb.target_lines(rows))
    assert "cpu 1.11x FAILS (won 0/10, p=0.00)" in text
    assert "slower in most rounds at p < 0.05 (CPU time) in 2/2" in text


def test_the_keras_applications_pair_shares_the_weights():
    import numpy as np

    (title, build), = lb._groups(["small"], 513)
    ours, theirs = build()
    assert title == "MobileNetV2 0.35/96" and (ours.name, theirs.name) == (lb.OURS, lb.THEIRS)
    layers = {layer.name: layer for layer in ours.model.layers}
    weighted = [layer for layer in theirs.model.layers if layer.weights]
    assert len(weighted) == 105  # 52 convs, 52 batch norms, the classifier
    for layer in weighted:
        for a, b in zip(layer.get_weights(), layers[layer.name].get_weights()):
            np.testing.assert_array_equal(a, b)


# --- the peer section (benchmarks/peer_bench.py) ---------------------------------------


def test_peer_time_based_learning_rate():
    from benchmarks import peer_bench

    clock = peer_bench._time_budget_callback()(budget_s=100.0, learning_rate=1e-3, warmup=0.1,
                                               alpha=0.01)
    assert clock.rate(0.0) == 0.0
    assert clock.rate(0.05) == pytest.approx(0.5e-3)  # half-way through the warm-up
    assert clock.rate(0.1) == pytest.approx(1e-3)  # the peak
    assert clock.rate(0.55) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # cosine half-way
    assert clock.rate(1.0) == pytest.approx(1e-5) and clock.rate(2.0) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="time budget"):
        peer_bench._time_budget_callback()(learning_rate=1e-3)


def test_peer_budget_counts_from_the_end_of_the_first_step(monkeypatch):
    import math
    from types import SimpleNamespace

    from benchmarks import peer_bench

    now = [0.0]
    monkeypatch.setattr(peer_bench.time, "perf_counter", lambda: now[0])
    clock = peer_bench._time_budget_callback()(budget_s=10.0, learning_rate=1e-3)
    model = SimpleNamespace(optimizer=SimpleNamespace(learning_rate=None), stop_training=False)
    clock.set_model(model)
    clock.on_train_begin()
    rates = []
    for end in (300.0, 305.0, 309.0, 310.5):  # the first step takes 300 s (tracing)
        clock.on_train_batch_begin(0)
        rates.append(model.optimizer.learning_rate)
        now[0] = end
        clock.on_train_batch_end(0)
        assert model.stop_training == (end >= 310.0), end
    clock.on_train_end()
    assert (clock.first_step_s, clock.seconds, clock.steps) == (300.0, 10.5, 4)
    assert rates[0] == rates[1] == pytest.approx(1e-3)  # no warm-up: the peak at fraction 0
    assert rates[2] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert rates[3] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.9))))


def test_peer_constant_folding_makes_yolo_ciou_nan():
    """keras-cv's CIoU of a padding box (all four sides at -96 px) against a real one: finite
    eagerly, NaN in a tf.function with grappler's constant folding (what made YOLOV8's traced
    loss NaN), finite and equal to the eager value inside ``without_constant_folding``."""
    _keras_cv_or_skip()
    import numpy as np
    import tensorflow as tf

    from benchmarks import peer_bench

    peer_bench.import_keras_cv()
    from keras_cv.src.bounding_box.iou import compute_ciou

    padding = tf.constant([[-96.0] * 4, [10.0, 10.0, 50.0, 40.0]])[:, None, :]
    predicted = tf.constant([[5.0, 5.0, 30.0, 30.0], [0.0, 0.0, 1.0, 1.0]])[None, :, :]

    def ciou(a, b):
        return compute_ciou(a, b, bounding_box_format="xyxy")

    eager = ciou(padding, predicted).numpy()
    assert np.all(np.isfinite(eager))
    folded = tf.function(ciou)(padding, predicted).numpy()
    np.testing.assert_allclose(folded[1], eager[1], rtol=1e-6)  # real boxes: unaffected
    if np.all(np.isfinite(folded[0])):
        pytest.skip("this TensorFlow no longer folds the padding box's height away")
    with peer_bench.without_constant_folding():
        traced = tf.function(ciou)(padding, predicted).numpy()
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
    assert tf.config.optimizer.get_experimental_options()["constant_folding"] is True  # restored


def test_peer_yolo_targets_shift_labels_and_drop_crowds():
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from benchmarks import peer_bench
    from pipelines.jobs.detection import EMBEDDED

    def element(boxes, labels, crowd):
        return {"image": tf.zeros([40, 50, 3], tf.uint8), "image_id": tf.constant(1, tf.int64),
                "boxes": tf.constant(boxes, tf.float32, [len(labels), 4]),
                "labels": tf.constant(labels, tf.int32), "is_crowd": tf.constant(crowd, tf.bool)}

    elements = [element([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], [3, 1], [False, True]),
                element([], [], [])]
    source = tf.data.Dataset.from_generator(lambda: iter(elements), output_signature={
        "image": tf.TensorSpec([40, 50, 3], tf.uint8), "image_id": tf.TensorSpec([], tf.int64),
        "boxes": tf.TensorSpec([None, 4], tf.float32), "labels": tf.TensorSpec([None], tf.int32),
        "is_crowd": tf.TensorSpec([None], tf.bool)})
    recipe = dataclasses.replace(EMBEDDED, input_size=64, batch_size=2, cache=False)
    images, targets = next(iter(peer_bench.yolo_train_dataset(source, recipe, max_boxes=3)))
    assert images.shape == (2, 64, 64, 3)
    order = np.argsort(-targets["classes"].numpy()[:, 0])  # shuffled: the image with a box first
    classes, boxes = targets["classes"].numpy()[order], targets["boxes"].numpy()[order]
    np.testing.assert_array_equal(classes, [[2, -1, -1], [-1, -1, -1]])  # label 3 -> class 2
    assert np.all(boxes[1] == -1) and np.all(boxes[0, 1:] == -1)
    box = boxes[0, 0]  # flipped or not: y stays, x is mirrored
    np.testing.assert_allclose(box[[0, 2]], [0.1, 0.5], atol=1e-6)
    assert np.allclose(box[[1, 3]], [0.2, 0.6], atol=1e-6) or \
        np.allclose(box[[1, 3]], [0.4, 0.8], atol=1e-6)


def test_peer_yolo_detections_of_the_ground_truth_score_ap50_one(tmp_path):
    """keras-cv's predict output (rel_yxyx boxes, classes 0..C-1, -1 padding) through the bench's
    conversion and the shared pycocotools evaluation: the ground truth itself scores AP50 1.0, a
    class shift or a box-order slip would not."""
    import dataclasses

    import numpy as np

    from benchmarks import peer_bench
    from pipelines.data import coco, coco_eval
    from pipelines.jobs import detection
    from pipelines.synthetic import coco as synthetic_coco

    synthetic_coco.generate(tmp_path, num_train=2, num_val=6, image_size=64, num_classes=3,
                            crowd_fraction=0)
    val = coco.load_coco(str(tmp_path), "val")
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=64, batch_size=4, cache=False)
    truth = {int(e["image_id"]): (e["boxes"].numpy(), e["labels"].numpy())
             for e in coco.coco_dataset(val)}

    class GroundTruthModel:  # answers predict as keras-cv's YOLOV8Detector does
        def predict(self, images, verbose=0):
            del verbose
            ids = self.ids
            cap = 20
            out = {"boxes": -np.ones((len(ids), cap, 4)), "confidence": -np.ones((len(ids), cap)),
                   "classes": -np.ones((len(ids), cap)), "num_detections": np.zeros(len(ids))}
            for i, image_id in enumerate(ids):
                boxes, labels = truth[int(image_id)]
                n = len(labels)
                out["boxes"][i, :n], out["confidence"][i, :n] = boxes, 0.9
                out["classes"][i, :n], out["num_detections"][i] = labels - 1, n
            return out

    model = GroundTruthModel()
    detections = []
    for images, ids in detection.eval_dataset(coco.coco_dataset(val), recipe):
        model.ids = ids.numpy()
        detections += peer_bench.yolo_detections(model, [(images, ids)])
    assert sum(len(d["boxes"]) for d in detections) == sum(len(v[1]) for v in truth.values()) > 0
    metrics = coco_eval.coco_evaluate(val.coco, detections, val.label_to_category)
    assert metrics["AP50"] == pytest.approx(1.0)


def test_peer_bn_momentum_reaches_nested_layers():
    """YOLOV8's AP50 of 0.000 came from keras-cv's backbone momentum 0.999: the helper must reach
    BatchNormalization layers inside nested models."""
    import keras

    from benchmarks import peer_bench

    inner = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 1),
                              keras.layers.BatchNormalization(momentum=0.999)])
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.BatchNormalization(momentum=0.97)(inner(inputs))
    model = keras.Model(inputs, outputs)
    assert peer_bench.set_bn_momentum(model, 0.9) == 2
    assert [layer.momentum for layer in (inner.layers[1], model.layers[-1])] == [0.9, 0.9]


@pytest.mark.slow
def test_peer_yolo_trains_with_the_recipe_bn_momentum():
    _keras_cv_or_skip()
    import dataclasses

    import keras

    from benchmarks import peer_bench
    from pipelines.jobs.detection import EMBEDDED

    recipe = dataclasses.replace(EMBEDDED, input_size=64)
    model = peer_bench.yolo_model(5, recipe)
    momenta = [layer.momentum for layer in model._flatten_layers(include_self=False)
               if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(momenta) > 50 and set(momenta) == {recipe.bn_momentum}


def test_peer_bad_settings_are_refused():
    from benchmarks import peer_bench

    with pytest.raises(ValueError, match="wall_seconds"):
        peer_bench.peer_bench(wall_seconds=0)
    with pytest.raises(ValueError, match="train_images"):
        peer_bench.peer_bench(train_images=0)


def _keras_cv_or_skip():
    from benchmarks import peer_bench

    try:
        peer_bench.import_keras_cv()
    except ImportError as err:
        pytest.skip(f"keras-cv is not installed (the peer section needs it): {err}")


def test_keras_cv_imports_after_tfmot_in_a_fresh_process():
    """TFMOT's import turns tensorflow.keras into tf_keras (TF_USE_LEGACY_KERAS=1), which broke
    keras-cv's import in a test worker that had run a QAT test first."""
    import subprocess
    import sys

    code = ("import tensorflow_model_optimization, tensorflow as tf; "
            "assert not getattr(tf.keras, 'version', lambda: '2')().startswith('3.'); "
            "from benchmarks import peer_bench; kcv = peer_bench.import_keras_cv(); "
            "print('keras_cv', kcv.__version__, kcv.src.backend.config.keras_3())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("True"), done.stdout


@pytest.mark.slow
def test_peer_bench_tiny(tmp_path, capsys):
    """Both detectors trained ~2 s on 32 images at 96 px: the table's structure and the figures
    that follow from the models (no timing or accuracy assertions)."""
    _keras_cv_or_skip()
    import math

    import keras_mnv2
    from benchmarks import peer_bench

    plot = tmp_path / "peer.png"
    # the equal-latency rows are test_peer_equal_latency_rows's (their training is this path's)
    rows, notes = peer_bench.peer_bench(wall_seconds=2, train_images=32, val_images=8,
                                        input_size=96, data_root=str(tmp_path / "coco"),
                                        repeats=2, calibration=2, verbose=0,
                                        equal_latency=False, plot=str(plot))
    assert list(rows) == list(peer_bench.NAMES)
    ssd, yolo = rows[peer_bench.NAMES[0]], rows[peer_bench.NAMES[1]]
    assert ssd.params == keras_mnv2.SSDLite(5, alpha=0.35, input_size=96).count_params()
    assert yolo.params == 1_412_583  # MobileNetV3-Small YOLOV8, 5 classes (keras_cv_probe)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    for row in (ssd, yolo):
        assert row.train_seconds >= 2 and row.steps >= 1  # stopped at the budget, not before
        assert 0 <= row.ap <= row.ap50 <= 1
        assert row.madds > 0
        # int8: about a byte a weight plus per-channel scales, int32 biases and the flatbuffer's
        # overhead (1.1-1.5 bytes a weight here); float32 would be 4
        assert 0.8 * row.params < row.tflite_bytes < 2 * row.params
        assert math.isfinite(row.int8_wall_ms) and row.int8_wall_ms > 0
        assert math.isfinite(row.loss), row  # YOLOV8's traced loss was NaN before the fix
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(peer_bench.table_lines(rows)[0]):]
    assert table[2].startswith(ssd.name) and f"{ssd.params:,}" in table[2]
    assert table[3].startswith(yolo.name) and f"{yolo.params:,}" in table[3]
    assert any("--wall-seconds 2" in n for n in notes)


def test_peer_equal_latency_choice():
    """The candidates grow the recipe's width or input size; the bracket is the nearest size on
    each side of the target latency; equal time scales the baseline's steps by the step-time
    ratio."""
    from benchmarks import peer_bench as pb

    assert pb.ssdlite_candidates(0.35, 160, widths=(0.35, 0.5, 1.0), sizes=(160, 224)) == [
        (0.5, 160), (1.0, 160), (0.35, 224)]
    latencies = {(0.5, 160): 0.4, (1.0, 160): 0.9, (0.35, 224): 0.6, (1.4, 160): 1.7}
    assert pb.bracket(latencies, 0.7) == [(0.35, 224), (1.0, 160)]
    assert pb.bracket(latencies, 0.9) == [(1.0, 160), (1.4, 160)]  # equal counts as below
    assert pb.bracket(latencies, 5.0) == [(1.4, 160)]
    assert pb.bracket(latencies, 0.1) == [(0.5, 160)]
    assert pb.bracket({}, 1.0) == []
    # 744 steps at 500 ms: 372 s; at 1500 ms that is 248 steps, 4 epochs of 62
    assert pb.equal_time_epochs(744, 500.0, 1500.0, 62) == 4
    assert pb.equal_time_epochs(744, 500.0, 500.0, 62) == 12
    assert pb.equal_time_epochs(10, 100.0, 1e6, 62) == 1
    with pytest.raises(ValueError, match="step times"):
        pb.equal_time_epochs(744, 0.0, 1.0, 62)
    assert pb.parse_candidates("0.75:160, 0.35:320") == [(0.75, 160), (0.35, 320)]
    assert pb.parse_candidates(None) is None
    for bad in ("0.75", "x:160", "0:160", "0.5:16"):
        with pytest.raises(ValueError, match="--candidates"):
            pb.parse_candidates(bad)


def test_peer_latency_plot(tmp_path):
    """The AP-against-latency figure: a PNG written whole (no temporary file left), one line a
    family."""
    from benchmarks import peer_bench as pb

    rows = {name: pb.PeerRow(name, 1, 1, 1.0, 1.0, 1, ap50, ap, int8_wall_ms=ms, int8_cpu_ms=ms)
            for name, ap50, ap, ms in ((pb.NAMES[0], 0.8, 0.4, 0.3),
                                       (pb.variant_name(1.4, 160), 0.7, 0.3, 1.7),
                                       (pb.NAMES[1], 0.9, 0.8, 1.6))}
    path = tmp_path / "peer.png"
    assert pb.plot_latency(rows, str(path), title="t") == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peer.png"]


def test_peer_equal_latency_rows(tmp_path, monkeypatch):
    """The equal-latency step on tiny models: the candidates' int8 files are really converted and
    timed against a stand-in for YOLOV8, and the chosen sizes get rows; the step-time probe and
    the training are replaced by fakes (both are the baseline's own code, run by
    test_peer_bench_tiny and test_peer_step_times_tiny), so the test checks what is passed to
    them and what comes back."""
    import types

    import keras
    import numpy as np

    from benchmarks import peer_bench as pb
    from keras_mnv2.detection.ssdlite import SSDLite
    from pipelines.jobs import detection

    probes, trained, rows = [], [], {}
    ms = {(0.35, 48): 100.0, (0.35, 64): 200.0, (0.35, 320): 1600.0}
    monkeypatch.setattr(pb, "step_times", lambda **kw: probes.append(kw) or {
        "SSDLite": ms[(kw["alpha"], kw["input_size"])]})

    def fake_train(root, recipe, budget_s, run_dir, verbose):
        trained.append((recipe, budget_s))
        model = SSDLite(3, alpha=recipe.alpha, input_size=recipe.input_size)
        clock = types.SimpleNamespace(seconds=1.5, first_step_s=0.5, steps=recipe.epochs * 10,
                                      loss=1.0)
        return {"AP50": 0.5, "AP": 0.25}, model, clock

    monkeypatch.setattr(pb, "train_ssdlite", fake_train)
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=48, epochs=16)
    keras.utils.set_random_seed(0)
    stand_in = SSDLite(3, alpha=1.0, input_size=96)  # YOLOV8's place, between the candidates
    samples = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    converted = {}

    def add_row(name, model, seconds, first, steps, stats, loss, size):
        rows[name] = (model.count_params(), steps, stats["AP50"], size)

    notes = pb._equal_latency_rows(
        add_row, recipe, "ROOT", 30.0, 160, 10, types.SimpleNamespace(num_classes=3), samples,
        {pb.NAMES[1]: stand_in}, converted, [(0.35, 64), (0.35, 320)],
        str(tmp_path), verbose=0)
    assert list(converted) == [pb.NAMES[1]] and converted[pb.NAMES[1]][4:8] == b"TFL3"
    # int8 work grows with width and pixels: the width-1.0 96 px stand-in (61M MAdds) lies
    # between width 0.35 at 64 px (6M) and at 320 px (143M), 2.3 times or more from each
    assert list(rows) == [pb.variant_name(0.35, 64), pb.variant_name(0.35, 320)], notes
    assert [p["input_size"] for p in probes] == [48, 64, 320]
    assert all(p["root"] == "ROOT" and p["alpha"] == 0.35 for p in probes)
    # 160 steps at 100 ms; at 200 ms that is 80 steps, 8 epochs of 10; at 1600 ms 10, 1 epoch
    assert [(r.alpha, r.input_size, r.epochs) for r, _ in trained] == [(0.35, 64, 8),
                                                                     (0.35, 320, 1)]
    assert all(budget == 30.0 for _, budget in trained)
    assert [r.warmup_epochs for r, _ in trained] == [0.5, 0.25]  # at most a quarter of them
    assert rows[pb.variant_name(0.35, 320)] == (
        SSDLite(3, alpha=0.35, input_size=320).count_params(), 10, 0.5, 320)
    assert notes[0].startswith("equal latency: SSDLite sizes chosen from 2 untrained")


def test_peer_step_times_tiny(tmp_path, capsys):
    """The step-time probe at 64 px, batch 4, SSDLite with the trivial loss only (each
    configuration traces a training step; the full probe's YOLOV8 path is the peer bench's)."""
    from benchmarks import peer_bench

    times = peer_bench.step_times(train_images=8, val_images=2, input_size=64, batch_size=4,
                                  data_root=str(tmp_path / "coco"), steps=2,
                                  configs=("SSDLite, trivial loss",))
    assert list(times) == ["SSDLite, trivial loss"] and 0 < times["SSDLite, trivial loss"] < 60e3
    assert "ms per training step on one fixed batch of 4 at 64 px" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown step-time configs"):
        peer_bench.step_times(configs=("RetinaNet",))
