"""Nothing lost, nothing silent (issue 14): kills, bad data, bad files and bad arguments each end
in a resumed run, a skip that is counted, or one clear line naming the problem."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines import cli
from pipelines.jobs import driver
from tests.test_classification import make_tiny_imagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, env=None, timeout=600):
    """The real ``keras-mnv2`` command in a fresh process; (return code, stdout, stderr)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    return done.returncode, done.stdout, done.stderr


def _history_epochs(run_dir):
    """The epoch column of history.csv as written (no de-duplication)."""
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _tiny_imagenet_args(data_dir, run_dir, epochs):
    return ["train", "imagenet", "--data-dir", data_dir, "--run-dir", run_dir, "--alpha", "0.35",
            "--resolution", "32", "--batch-size", "4", "--epochs", epochs,
            "--steps-per-epoch", "3", "--shuffle-buffer", "16", "--weight-decay", "0",
            "--use-ema", "false"]


# ----------------------------------------------------------------------------- kills


def _state(run_dir):
    return driver.ResumeState(os.path.join(run_dir, "backup"), run_dir).epochs_done()


@pytest.mark.slow
def test_sigkill_job_during_checkpoint_and_state_writes_then_rerun_resumes(tmp_path):
    """A real training job (the CLI, tiny ImageNet folder) SIGKILLed while last.keras is being
    written and while the resume state is being written, then the same command rerun: no epoch
    lost or repeated in history.csv, and the final models load."""
    import keras

    data_dir = make_tiny_imagenet(tmp_path / "data")
    run_dir = str(tmp_path / "run")
    args = _tiny_imagenet_args(data_dir, run_dir, 3)
    code, _, err = _cli(*args, env={driver.KILL_AT_ENV: "checkpoint@1"})
    assert code == -9, err[-2000:]
    # epoch 2's row is in history.csv, its last.keras under the temporary name only
    assert _state(run_dir) == 1 and _history_epochs(run_dir) == [0, 1]
    assert ".last.tmp.keras" in os.listdir(run_dir)
    keras.saving.load_model(os.path.join(run_dir, "last.keras"), compile=False)  # epoch 1's
    code, _, err = _cli(*args, env={driver.KILL_AT_ENV: "state@1"})
    assert code == -9, err[-2000:]
    assert _state(run_dir) == 1  # epoch 2's weights renamed in, its metadata not written
    code, out, err = _cli(*args)
    assert code == 0, err[-3000:]
    assert _history_epochs(run_dir) == [0, 1, 2]  # each epoch once, in order
    for name in ("last.keras", "model.keras"):
        model = keras.saving.load_model(os.path.join(run_dir, name), compile=False)
        assert model.output_shape == (None, 3)
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    # 16 listed, 1 corrupt: the images actually used
    assert metrics["train_images"] == 15 and metrics["train_images_listed"] == 16
    assert sorted(os.listdir(os.path.join(run_dir, "backup"))) == [
        "epoch-3.weights.h5", "training_metadata.json"]


@pytest.mark.slow
def test_sigkill_driver_at_every_other_moment(tmp_path):
    """The shared driver in a real process (a one-layer model, for speed) SIGKILLed mid-epoch,
    during the history write and during the weights write, rerun after each."""
    run_dir = str(tmp_path / "run")
    script = tmp_path / "train.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {REPO!r})\n"
        "from tests.test_driver import _data, _model\nfrom pipelines.jobs import driver\n"
        f"driver.fit(_model(), _data(), 4, {run_dir!r}, verbose=0)\nprint('finished')\n")
    for point, done in (("batch@1", 1), ("history@1", 1), ("state-weights@2", 2)):
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, driver.KILL_AT_ENV: point})
        assert proc.returncode == -9, (point, proc.stderr[-2000:])
        assert _state(run_dir) == done, point
        assert _history_epochs(run_dir)[:done] == list(range(done)), point
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert "finished" in proc.stdout, proc.stderr[-2000:]
    assert _history_epochs(run_dir) == [0, 1, 2, 3]


# ``keras-mnv2`` with tf.functions run eagerly: tracing SSDLite's training step costs about a
# minute on 2 cores, and every rerun after a kill would pay it again. What is written, when and
# how is the same as in graph mode.
_EAGER_CLI = ("import sys; import tensorflow as tf; tf.config.run_functions_eagerly(True); "
              "from pipelines.cli import main; sys.exit(main(sys.argv[1:]))")
# The temporary names of the checkpoint files (keras_mnv2.files.temporary_name).
_CHECKPOINT_TEMPORARIES = {"last.keras": ".last.tmp.keras", "resume state": ".tmp.weights.h5"}


# ``keras-mnv2`` with the driver's ``fit`` run eagerly, the rest (the TFLite export, which needs
# graphs) as usual: tracing the QAT SSDLite's training step costs about a minute on 2 cores.
_EAGER_FIT_CLI = """
import sys
import tensorflow as tf
from pipelines.jobs import driver
graph_fit = driver.fit
def eager_fit(*args, **kwargs):
    tf.config.run_functions_eagerly(True)
    try:
        return graph_fit(*args, **kwargs)
    finally:
        tf.config.run_functions_eagerly(False)
driver.fit = eager_fit
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_cli(args, log, program=_EAGER_CLI):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-c", program, *map(str, args)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _temporaries(run_dir):
    """The temporary files under ``run_dir`` (TensorBoard's logs/ aside)."""
    found = []
    for folder, dirs, files in os.walk(run_dir):
        dirs[:] = [d for d in dirs if d != "logs"]
        found += [os.path.join(folder, name) for name in files if ".tmp." in name]
    return found


def _stamps(run_dir):
    """{temporary file: (inode, mtime)}: a file written anew gets another stamp."""
    stamps = {}
    for path in _temporaries(run_dir):
        try:
            info = os.stat(path)
        except FileNotFoundError:  # renamed in between
            continue
        stamps[path] = (info.st_ino, info.st_mtime_ns)
    return stamps


def _check_whole(run_dir):
    """Reads every file of the run but the temporaries a kill left (never read: the next write
    of that file replaces them) and TensorBoard's event files (appended to, not written whole):
    each must be whole (.keras: every zip member; .h5: every array; .tflite: loaded by
    ai_edge_litert). Returns their paths, relative to ``run_dir``."""
    import zipfile

    import h5py
    from PIL import Image

    checked = []
    for folder, dirs, files in os.walk(run_dir):
        dirs[:] = [d for d in dirs if d != "logs"]
        for name in sorted(files):
            path = os.path.join(folder, name)
            if ".tmp." in name:
                continue
            if name.endswith(".keras"):
                with zipfile.ZipFile(path) as archive:
                    assert archive.testzip() is None, path
            elif name.endswith(".h5"):  # every array read back
                with h5py.File(path, "r") as f:
                    f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset)
                                 else None)
            elif name.endswith(".tflite"):  # ai_edge_litert loads it and allocates its tensors
                from keras_mnv2.deploy import tflite

                tflite.interpreter(path)
            elif name.endswith(".json"):
                with open(path) as f:
                    json.load(f)
            elif name == "history.csv":
                epochs = _history_epochs(folder)
                assert epochs == sorted(set(epochs)), epochs  # cut back on resume, never torn
            elif name.endswith(".png"):
                Image.open(path).verify()
            checked.append(os.path.relpath(path, run_dir))
    return checked


@pytest.mark.slow
def test_sigkill_from_outside_at_random_moments_then_rerun_finishes(tmp_path):
    """``keras-mnv2 train coco`` on a tiny recipe, SIGKILLed from outside (as a pre-empted VM or
    the out-of-memory killer would) at seeded random moments across the run and the moment a
    checkpoint file is being written, the same command rerun after each kill: the run finishes,
    history.csv has each epoch once, and every file reads whole after every kill."""
    import time

    import keras

    from pipelines.synthetic import coco as synthetic_coco

    coco_dir = synthetic_coco.generate(tmp_path / "coco", num_train=8, num_val=2, image_size=64,
                                       num_classes=2)
    epochs = 4

    def args(run_dir):
        return ["train", "coco", "--coco-dir", coco_dir, "--recipe", "embedded", "--alpha",
                "0.35", "--input-size", "64", "--epochs", epochs, "--batch-size", "8",
                "--run-dir", run_dir]

    # The moments are fractions of an uninterrupted run's time, measured here.
    with open(tmp_path / "reference.log", "w") as log:
        start = time.monotonic()
        code = _start_cli(args(tmp_path / "reference"), log).wait(timeout=600)
        run_time = time.monotonic() - start
    assert code == 0, (tmp_path / "reference.log").read_text()[-3000:]

    run_dir = str(tmp_path / "run")
    rng = np.random.RandomState(14)
    # First 4 kills while a checkpoint file is being written (the moment its temporary file
    # appears, polled every millisecond) at the end of the first or second epoch the rerun
    # trains: each ends before that epoch is recorded as done, so they never finish the run.
    # Then kills at random moments until there are 10 in all.
    plan = [str(rng.choice(sorted(_CHECKPOINT_TEMPORARIES))) for _ in range(4)]
    kills, finished = [], 0
    stale = {}  # the temporary files a kill left: the next write of the file reuses the name

    def writing(target):
        """The temporary files of ``target`` being written now (not one a kill left)."""
        return [path for path, stamp in _stamps(run_dir).items()
                if path.endswith(_CHECKPOINT_TEMPORARIES[target]) and stale.get(path) != stamp]

    log = open(tmp_path / "run.log", "w")
    while len(kills) < 10:
        assert len(kills) + finished < 20, kills
        target = plan.pop(0) if plan else "moment"
        done = _state(run_dir) if os.path.exists(run_dir) else 0
        proc = _start_cli(args(run_dir), log)
        start = time.monotonic()
        if target == "moment":
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.0) * run_time)
            except subprocess.TimeoutExpired:
                pass
        else:
            at = rng.randint(1, min(2, epochs - done) + 1)  # this or the next epoch's write
            seen, present = 0, False
            while proc.poll() is None:
                now = bool(writing(target))
                seen += now and not present
                present = now
                if seen == at:
                    break
                time.sleep(0.001)
        if proc.poll() is not None:  # finished before the moment: a finished run's rerun next
            assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
            finished += 1
            continue
        proc.kill()  # SIGKILL
        proc.wait()
        mid_write = target != "moment" and bool(writing(target))  # still there: not renamed
        left = [os.path.relpath(p, run_dir) for p in _temporaries(run_dir)]
        kills.append((target, round(time.monotonic() - start, 1), mid_write, left, done,
                      _state(run_dir)))
        _check_whole(run_dir)
        stale = _stamps(run_dir)
    proc = _start_cli(args(run_dir), log)  # the same command once more, to the end
    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    log.close()

    print(f"\nuninterrupted run {run_time:.1f} s; {len(kills)} kills (what was waited for, "
          "seconds after the start, killed mid-write, temporary files left, epochs in the "
          "resume state before and after):")
    for kill in kills:
        print("  ", *kill)
    print(f"{finished} reruns finished before their kill moment")
    assert sum(kill[2] for kill in kills) == 4, kills  # killed while a checkpoint was written
    assert _history_epochs(run_dir) == list(range(epochs))  # each epoch once, in order
    assert _state(run_dir) == epochs
    checked = _check_whole(run_dir)
    print(f"after the last rerun: history.csv epochs {_history_epochs(run_dir)}, "
          f"{len(checked)} files whole: {', '.join(checked)}")
    assert sorted(checked) == sorted(_check_whole(str(tmp_path / "reference")))
    model = keras.saving.load_model(os.path.join(run_dir, "last.keras"), compile=False)
    assert model.anchors.shape == (model.output["boxes"].shape[1], 4)


# The temporary files a QAT run writes, by their path relative to the float run's folder.
_QAT_TEMPORARIES = {
    "last.weights.h5": lambda rel: rel == os.path.join("qat", ".last.tmp.weights.h5"),
    "resume state": lambda rel: rel.startswith(os.path.join("qat", "backup", ".epoch-")),
    "tflite": lambda rel: rel == os.path.join("tflite", ".coco_qat.tmp.tflite"),
}


@pytest.mark.slow
def test_sigkill_qat_from_outside_then_rerun_finishes(tmp_path):
    """``keras-mnv2 qat coco`` (TFMOT, through the training driver) on a tiny trained run,
    SIGKILLed from outside while its weights file, its resume state and its .tflite file are
    being written, and at a random moment, the same command rerun after each kill: the run
    finishes, qat/history.csv has each epoch once, every file reads whole after every kill, and
    the float run's files are untouched."""
    import hashlib
    import time

    from pipelines.synthetic import coco as synthetic_coco

    coco_dir = synthetic_coco.generate(tmp_path / "coco", num_train=8, num_val=2, image_size=64,
                                       num_classes=2)
    run_dir = str(tmp_path / "run")
    with open(tmp_path / "train.log", "w") as log:  # 4 steps: QAT of a 1-step model diverges
        code = _start_cli(["train", "coco", "--coco-dir", coco_dir, "--recipe", "embedded",
                           "--alpha", "0.35", "--input-size", "64", "--epochs", 4,
                           "--batch-size", "8", "--run-dir", run_dir], log).wait(timeout=600)
    assert code == 0, (tmp_path / "train.log").read_text()[-3000:]

    def digests():
        return {rel: hashlib.sha256(open(os.path.join(run_dir, rel), "rb").read()).hexdigest()
                for rel in _check_whole(run_dir)}

    float_run = digests()
    epochs = 3
    args = ["qat", "coco", "--run-dir", run_dir, "--epochs", epochs, "--steps-per-epoch", 1,
            "--no-compare"]
    qat_dir = os.path.join(run_dir, "qat")
    rng = np.random.RandomState(15)
    # Two kills while a weights file is written (the moment its temporary file appears, at the
    # first or second such write of the rerun: each ends before the epoch is recorded as done),
    # one at a random moment up to a little past the time those reruns took to reach their
    # kill, one while the .tflite file is written (after the last epoch). Each rerun builds and
    # quantizes the model again, most of its time: 4 kills here, 10 in the train coco test.
    plan = [str(t) for t in rng.permutation(["last.weights.h5", "resume state"])]
    plan += ["moment", "tflite"]
    kills, reached, finished = [], [], 0
    stale = {}  # the temporary files a kill left: the next write of the file reuses the name

    def writing(target):
        return [path for path, stamp in _stamps(run_dir).items()
                if _QAT_TEMPORARIES[target](os.path.relpath(path, run_dir))
                and stale.get(path) != stamp]

    log = open(tmp_path / "qat.log", "w")
    for target in plan:
        done = _state(qat_dir)
        proc = _start_cli(args, log, _EAGER_FIT_CLI)
        start = time.monotonic()
        if target == "moment":
            try:
                proc.wait(timeout=rng.uniform(0.2, 1.2) * np.mean(reached))
            except subprocess.TimeoutExpired:
                pass
        else:
            at = 1 if target == "tflite" else rng.randint(1, min(2, epochs - done) + 1)
            seen, present = 0, False
            while proc.poll() is None and time.monotonic() - start < 600:
                now = bool(writing(target))
                seen += now and not present
                present = now
                if seen == at:
                    break
                time.sleep(0.001)
            reached.append(time.monotonic() - start)
        if proc.poll() is not None:  # finished before the moment
            assert target == "moment" and proc.returncode == 0, (
                target, (tmp_path / "qat.log").read_text()[-3000:])
            finished += 1
            continue
        proc.kill()  # SIGKILL
        proc.wait()
        mid_write = target != "moment" and bool(writing(target))  # still there: not renamed
        left = [os.path.relpath(p, run_dir) for p in _temporaries(run_dir)]
        kills.append((target, round(time.monotonic() - start, 1), mid_write, left, done,
                      _state(qat_dir)))
        _check_whole(run_dir)
        stale = _stamps(run_dir)
    proc = _start_cli(args, log, _EAGER_FIT_CLI)  # the same command once more, to the end
    assert proc.wait(timeout=600) == 0, (tmp_path / "qat.log").read_text()[-3000:]
    log.close()

    print(f"\nQAT: {len(kills)} kills (what was waited for, seconds after the start, killed "
          "mid-write, temporary files left, QAT epochs in the resume state before and after):")
    for kill in kills:
        print("  ", *kill)
    print(f"{finished} reruns finished before their kill moment")
    # every kill at a file's write landed while its temporary file was there: before the rename
    assert [kill[2] for kill in kills if kill[0] != "moment"] == [True] * 3, kills
    assert _history_epochs(qat_dir) == list(range(epochs))  # each epoch once, in order
    assert _state(qat_dir) == epochs
    after = digests()
    print(f"after the last rerun: qat/history.csv epochs {_history_epochs(qat_dir)}, "
          f"{len(after)} files whole: {', '.join(sorted(after))}; temporary files left: "
          f"{[os.path.relpath(p, run_dir) for p in _temporaries(run_dir)]}")
    assert {rel: after.get(rel) for rel in float_run} == float_run  # the float run untouched
    assert {os.path.join("qat", "history.csv"), os.path.join("qat", "last.weights.h5"),
            os.path.join("qat", "backup", f"epoch-{epochs}.weights.h5"),
            os.path.join("qat", "backup", "training_metadata.json"),
            os.path.join("tflite", "coco_qat.tflite")} <= set(after)


def test_every_file_is_fsynced_with_its_folder_and_renamed_by_one_function(tmp_path,
                                                                           monkeypatch):
    """Each file a run writes whole goes through ``keras_mnv2.files.write_file``: the new
    content is fsynced, and its folder, before the rename, and the folder after it (so a power
    loss leaves the old file or the new one); no other rename is made."""
    from keras_mnv2 import files
    from pipelines import manifest
    from tests.test_driver import _data, _model

    events, names = [], {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def opened(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        names[fd] = os.path.abspath(path)
        return fd

    def fsync(fd):
        events.append(("fsync", names.get(fd)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run_dir = str(tmp_path / "run")
    driver.prepare_run_dir(run_dir)
    driver.fit(_model(), _data(), 1, run_dir, verbose=0)
    driver.write_metrics(run_dir, {"loss": 1.0})
    manifest.write_manifest(run_dir, {"n": 1})
    files.write_bytes(os.path.join(run_dir, "model.tflite"), b"tflite")
    renamed = []
    for i, event in enumerate(events):
        if event[0] != "replace":
            continue
        _, src, dst = event
        folder = os.path.dirname(dst)
        assert src == os.path.join(folder, os.path.basename(files.temporary_name(dst)))
        assert events[i - 2:i] == [("fsync", src), ("fsync", folder)], events[i - 3:i + 1]
        assert events[i + 1] == ("fsync", folder), events[i:i + 2]
        renamed.append(os.path.relpath(dst, run_dir))
    assert sorted(renamed) == ["backup/epoch-1.weights.h5", "backup/training_metadata.json",
                               "curves.png", "history.csv", "last.keras", "manifest.json",
                               "metrics.json", "model.tflite"]


def test_unreadable_resume_state_says_how_to_resume_or_start_over(tmp_path):
    from tests.test_driver import _data, _model

    run_dir = str(tmp_path / "run")
    driver.fit(_model(), _data(), 1, run_dir, verbose=0)
    weights = os.path.join(run_dir, "backup", "epoch-1.weights.h5")
    with open(weights, "r+b") as f:  # an HDF5 file cut short (a disk that lost its tail)
        f.truncate(os.path.getsize(weights) // 3)
    with pytest.raises(driver.RunDirError) as info:
        driver.fit(_model(), _data(), 2, run_dir, verbose=0)
    message = str(info.value)
    assert "epoch-1.weights.h5 cannot be read" in message
    assert f"rm -r {os.path.join(run_dir, 'backup')}" in message and "last.keras" in message
    assert "new --run-dir" in message
    # Keras's own BackupAndRestore state (a run of an older version) still resumes
    (tmp_path / "old" / "backup").mkdir(parents=True)
    model = _model()
    model.save_weights(str(tmp_path / "old" / "backup" / "latest.weights.h5"))
    (tmp_path / "old" / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    driver.fit(model, _data(), 2, str(tmp_path / "old"), verbose=0)
    assert _history_epochs(str(tmp_path / "old")) == [1]


def test_history_is_cut_back_to_the_resume_state(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.4\n2,0.3\n3,0.2")
    # epoch 2 twice dropped; the last line, cut by a kill (no newline), is never read as a row
    assert driver.cut_history(str(run_dir), 2) == 2
    assert _history_epochs(str(run_dir)) == [0, 1]


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_qat_fit_killed_mid_write_keeps_whole_files_and_resumes(tmp_path, monkeypatch):
    """QAT (the TFMOT tf_keras path) trains through the shared driver: a kill with a file's new
    content written but not renamed leaves the old file whole, and the rerun resumes from the
    last committed epoch (weights, quantization ranges and optimizer) with no history row lost
    or repeated, ending where an uninterrupted run ends."""
    import tensorflow as tf
    import tf_keras

    from keras_mnv2.deploy import qat

    layers = tf_keras.layers
    inputs = layers.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    model = qat.quantize(tf_keras.Model(inputs, layers.Dense(2, name="head")(x)), log=None)
    initial = model.get_weights()

    def quantized():  # the model as a restarted process builds it (a new optimizer too)
        model.set_weights(initial)
        model.compile(tf_keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                      run_eagerly=True)  # one step an epoch: quicker than tracing it
        return model

    rng = np.random.RandomState(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.uniform(-1, 1, (4, 8, 8, 3)).astype("float32"), np.array([0, 1, 0, 1]))).batch(4)
    run_dir = str(tmp_path / "qat")

    def fit(model, epochs, kill_at=None, into=run_dir):
        def kill(point, epoch):
            if f"{point}@{epoch}" == kill_at:
                raise _Killed(kill_at)

        monkeypatch.setattr(driver, "_kill_point", kill)
        return qat.qat_fit(model, data.repeat(), epochs, run_dir=into, steps_per_epoch=1,
                           verbose=0)

    fit(quantized(), 3, into=str(tmp_path / "straight"))
    straight = model.get_weights()
    backup = os.path.join(run_dir, "backup")
    state = driver.callback_classes("tf_keras").ResumeState(backup, run_dir)
    with pytest.raises(_Killed):  # epoch 1 in history.csv and its weights renamed in, not
        fit(quantized(), 3, "state@0")  # committed: the rerun starts over, its row replaced
    assert _history_epochs(run_dir) == [0] and state.epochs_done() == 0
    with pytest.raises(_Killed):  # epoch 2's history row written under the temporary name only
        fit(quantized(), 3, "history@1")
    assert _history_epochs(run_dir) == [0]
    assert os.path.exists(os.path.join(run_dir, ".history.tmp.csv"))
    assert state.epochs_done() == 1
    # the state restores the model (quantization ranges too) and optimizer of epoch 1, as
    # last.weights.h5 holds them
    restored = quantized()
    assert state.restore(restored) == 1
    after_restore = restored.get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(after_restore, initial))
    restored.load_weights(os.path.join(run_dir, "last.weights.h5"))
    for got, want in zip(after_restore, restored.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(restored.optimizer.iterations) == 1

    with pytest.raises(_Killed):  # resumed at epoch 2; killed with last.weights.h5 not renamed
        fit(quantized(), 3, "checkpoint@2")
    assert _history_epochs(run_dir) == [0, 1, 2]
    assert os.path.exists(os.path.join(run_dir, ".last.tmp.weights.h5"))
    assert state.epochs_done() == 2
    with pytest.raises(_Killed):  # epoch 3's history, weights and state weights in place, the
        fit(quantized(), 3, "state@2")  # state's metadata not
    assert state.epochs_done() == 2
    model = quantized()
    history = fit(model, 3)  # epoch 3 again, its history row replaced, not repeated
    assert history.epoch == [2]
    assert _history_epochs(run_dir) == [0, 1, 2]
    assert state.epochs_done() == 3 and int(model.optimizer.iterations) == 3
    assert sorted(os.listdir(backup)) == ["epoch-3.weights.h5", "training_metadata.json"]
    trained = model.get_weights()
    for got, want in zip(trained, straight):  # as if never killed
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    model.load_weights(os.path.join(run_dir, "last.weights.h5"))
    for got, want in zip(trained, model.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert fit(quantized(), 3).epoch == []  # a finished run is not trained again
    with open(state.metadata_path, "w") as f:  # a state cut short: one line saying what to do
        f.write('{"epoch": 3, "weig')
    with pytest.raises(driver.RunDirError, match=r"resume state .*training_metadata\.json "
                                                 r"cannot be read .*rm -r .*backup .*history\.csv"
                                                 r".*last\.weights\.h5"):
        fit(quantized(), 3)


def test_zero_trained_steps_stop_and_record_nothing(tmp_path):
    import tensorflow as tf

    from tests.test_driver import _model

    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 4), "float32"), np.zeros((0, 1), "float32"))).batch(4).repeat()
    run_dir = str(tmp_path / "run")
    with pytest.raises(driver.NoTrainingError, match="epoch 1 trained zero steps"):
        driver.fit(_model(), empty, 2, run_dir, steps_per_epoch=3, verbose=0)
    assert not os.path.exists(os.path.join(run_dir, "backup"))  # nothing recorded as done
    assert not os.path.exists(os.path.join(run_dir, "history.csv"))
    assert not os.path.exists(os.path.join(run_dir, "last.keras"))


# ----------------------------------------------------------------------------- COCO data


@pytest.fixture
def tiny_coco(tmp_path):
    from pipelines.synthetic import coco as synthetic_coco

    return synthetic_coco.generate(tmp_path / "coco", num_train=6, num_val=2, image_size=64,
                                   num_classes=2)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_coco_size_mismatch_is_skipped_and_counted_or_stops(tiny_coco):
    import tensorflow as tf

    from pipelines.data import coco

    annotations = tiny_coco / "annotations" / "instances_train.json"

    def tenfold(data):  # 960x870 listed, 96x87 on disk: boxes 10x too small
        data["images"][0]["height"] *= 10
        data["images"][0]["width"] *= 10

    _edit_json(annotations, tenfold)
    index = coco.load_coco(tiny_coco, "train")
    ids = [int(e["image_id"]) for e in coco.coco_dataset(index).as_numpy_iterator()]
    first = index.file_names[0]
    assert len(ids) == 5 and int(index.image_ids[0]) not in ids
    assert index.skipped_images.skipped == 1 and index.skipped_images.files[0].endswith(first)
    reason = index.skipped_images.reasons[index.skipped_images.files[0]]
    assert "on disk but" in reason and "in instances_train.json" in reason
    with pytest.raises(tf.errors.OpError) as info:
        list(coco.coco_dataset(coco.load_coco(tiny_coco, "train"), size_mismatch="stop"))
    line = cli.error_line(info.value)
    assert first in line and "on disk but" in line and "\n" not in line


def test_coco_missing_file_found_while_indexing(tiny_coco):
    from pipelines.data import coco

    index = coco.load_coco(tiny_coco, "train")
    (index.image_dir / index.file_names[1]).unlink()
    with pytest.raises(coco.CocoFormatError, match=rf"1 of 6 listed images are not in .*"
                                                    rf"{index.file_names[1]}"):
        coco.load_coco(tiny_coco, "train")


def test_coco_empty_annotations_warn(tiny_coco, caplog):
    from pipelines.data import coco

    _edit_json(tiny_coco / "annotations" / "instances_train.json",
               lambda d: d.update(annotations=[]))
    with caplog.at_level("WARNING"):
        coco.load_coco(tiny_coco, "train")
    assert "instances_train.json: no usable annotations (0 listed)" in caplog.text
    assert "detect nothing" in caplog.text


def test_coco_no_images_stops_before_the_model(tiny_coco, tmp_path):
    from pipelines.data import coco
    from pipelines.jobs import detection

    _edit_json(tiny_coco / "annotations" / "instances_train.json",
               lambda d: d.update(images=[], annotations=[]))
    recipe = dataclasses.replace(detection.EMBEDDED, input_size=96, epochs=1)
    with pytest.raises(coco.CocoFormatError, match="instances_train.json: lists no images"):
        detection.run(coco_dir=str(tiny_coco), run_dir=str(tmp_path / "run"), recipe=recipe)
    assert not os.path.exists(tmp_path / "run" / "metrics.json")


# ----------------------------------------------------------------------------- ImageNet, VOC


def test_imagenet_empty_class_folder_warns_naming_it(tmp_path, caplog):
    from pipelines.data import imagenet

    root = make_tiny_imagenet(tmp_path / "data")
    empty = root / "train" / "n09999999"
    empty.mkdir()
    with caplog.at_level("WARNING"):
        source = imagenet.folder_source(root, "train")
    assert source.empty_classes == ("n09999999",) and source.num_classes == 4
    assert "1 of 4 classes have no images (never learned): n09999999" in caplog.text


def test_voc_mask_problems_are_one_clear_error_before_training(tmp_path):
    from PIL import Image

    from pipelines.data import voc
    from tests.test_voc_pipeline import make_mask, save_palette_png, write_voc

    root = write_voc(tmp_path, train=["2007_000001"], val=["2007_000010", "2007_000011"])
    masks = root / "VOC2012" / "SegmentationClass"
    good = voc.load_voc(root, "val")
    assert voc.check_examples(good) == 0
    wrong = make_mask("2007_000011")
    wrong[0, 0] = 30
    for writes, message in (
            (lambda p: save_palette_png(p, make_mask("2007_000011", 40, 50)),
             "mask is 40x50 but its image is 40x52"),
            (lambda p: save_palette_png(p, wrong), "labels [30] outside the class range 0..20"),
            (lambda p: Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(p), "mode 'RGB'"),
            (lambda p: p.write_bytes(b"\x89PNG not really"), "cannot read mask")):
        writes(masks / "2007_000011.png")
        index = voc.load_voc(root, "val")
        with pytest.raises(voc.VocFormatError) as info:
            voc.check_examples(index)
        assert "2007_000011.png" in str(info.value) and message in str(info.value)
        assert "--skip-bad" in str(info.value)
        skipping = voc.load_voc(root, "val", skip_bad=True)
        assert voc.check_examples(skipping) == 1 and skipping.ids == ["2007_000010"]
        assert skipping.skipped.files[0].endswith("2007_000011.png")
    # read inside tf.data (a train mask), the CLI shows the VocFormatError's own line
    import tensorflow as tf

    with pytest.raises(tf.errors.OpError) as info:
        list(voc.voc_dataset(voc.load_voc(root, "val")))
    line = cli.error_line(info.value)
    assert line.startswith(str(masks / "2007_000011.png")) and "\n" not in line


# ----------------------------------------------------------------------------- run dir, CLI


def test_run_dir_checked_first(tmp_path):
    from pipelines.jobs import detection

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(driver.RunDirError, match="is a file, not a folder"):
        driver.prepare_run_dir(str(a_file), detection.EMBEDDED)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(driver.RunDirError, match="cannot be written"):
            driver.prepare_run_dir(str(locked), detection.EMBEDDED)
    run_dir = str(tmp_path / "run")
    driver.prepare_run_dir(run_dir, detection.EMBEDDED)
    driver.prepare_run_dir(run_dir, detection.EMBEDDED)  # the same recipe: resumes
    other = dataclasses.replace(detection.EMBEDDED, alpha=0.5, epochs=3)
    with pytest.raises(driver.RunDirError) as info:
        driver.prepare_run_dir(run_dir, other)
    message = str(info.value)
    assert "alpha: 0.35 in the run, 0.5 now" in message
    assert f"epochs: {detection.EMBEDDED.epochs} in the run, 3 now" in message
    assert "new --run-dir" in message and len(message) < 400


def test_cli_expected_failures_are_one_line_exit_2(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    # a run dir that is a file: found before any data is generated or model built
    assert cli.main(["train", "coco", "--run-dir", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err
    assert cli.main(["train", "coco", "--coco-dir", str(tmp_path / "nope"),
                     "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    with pytest.raises(FileNotFoundError):  # --debug: the traceback
        cli.main(["train", "coco", "--coco-dir", str(tmp_path / "nope"),
                  "--run-dir", str(tmp_path / "r"), "--debug"])
    # a model file that is not one
    garbage = tmp_path / "model.keras"
    garbage.write_bytes(b"\0" * 1000)
    assert cli.main(["eval", "coco", "--model", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a .keras model file" in err


def test_cli_booleans_are_strict(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["train", "coco", "--cache"]).cache is True
    assert parser.parse_args(["train", "coco", "--no-cache"]).cache is False
    # the old spelling (--cache VALUE, deprecated; tests/test_cli.py) takes booleans only
    for text, value in (("true", True), ("False", False), ("1", True), ("no", False)):
        assert parser.parse_args(["train", "coco", "--cache", text]).cache is value
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["train", "coco", "--cache", "abc"])
    assert info.value.code == 2
    assert "argument --cache: expected true or false (1/0, yes/no), got 'abc'" in \
        capsys.readouterr().err


def test_disk_full_is_one_line_saying_what_to_do():
    import errno

    err = OSError(errno.ENOSPC, "No space left on device", "runs/coco/.last.tmp.keras")
    line = cli.error_line(err)
    assert "disk is full while writing runs/coco/.last.tmp.keras" in line
    assert "run the same command again" in line


def test_tflite_checked_against_the_run_before_evaluating(tmp_path):
    import keras

    import tensorflow as tf

    from keras_mnv2.deploy import export
    from pipelines.jobs import deploy

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    path = tmp_path / "model.tflite"
    path.write_bytes(export.convert(model, output="raw"))
    images = np.zeros((2, 32, 32, 3), np.float32)
    deploy.check_tflite(str(path), images, 3, "*")  # fits
    with pytest.raises(ValueError) as info:
        deploy.check_tflite(str(path), np.zeros((2, 48, 48, 3), np.float32), 5, "*")
    message = str(info.value)
    assert "its input is 32x32x3 but the run's images are 48x48x3" in message
    assert "has 3 classes but the run has 5" in message and "keras-mnv2 export" in message
    # An input type no export writes (export.convert's input is a float32 image), so this file
    # is converted here, from the Keras model as it is.
    inputs = keras.Input((32, 32, 3), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.ops.cast(inputs, "float32"))
    converter = tf.lite.TFLiteConverter.from_keras_model(
        keras.Model(inputs, keras.layers.Dense(3)(pooled)))
    other = tmp_path / "int32.tflite"
    other.write_bytes(converter.convert())
    with pytest.raises(ValueError, match="its input type is int32 .expected float32, int8 or "
                                         "uint8."):
        deploy.check_tflite(str(other), images, 3, "*")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="garbage.tflite cannot be read as a TFLite model"):
        deploy.check_tflite(str(garbage), images)
