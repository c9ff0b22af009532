"""Files a run writes, written whole: ``write_file`` writes the content under a temporary name in
the same folder, fsyncs it and the folder, renames it into place and fsyncs the folder again, so
a kill or a power loss leaves the old file or the new one, never half of one. It is the one way a
file is written whole here: the training driver (``pipelines.jobs.driver``: history.csv,
last.keras, the resume state, curves.png; QAT runs train through it too),
``pipelines.manifest.write_atomic`` (every other text file a run or a generator writes), the
exported .tflite files and ``keras-mnv2 convert``.

``KERAS_MNV2_KILL_AT=<point>@<epoch>`` kills the process at that point of that epoch (0-based),
between a write and its rename: the kill-and-resume tests set it (tests/test_faults.py also
kills the command from outside, at moments it does not choose).
"""

import csv
import io
import os
import signal

KILL_AT_ENV = "KERAS_MNV2_KILL_AT"


def kill_point(point, epoch):
    """SIGKILLs this process if ``KERAS_MNV2_KILL_AT`` names this point and epoch."""
    if os.environ.get(KILL_AT_ENV) == f"{point}@{epoch}":
        print(f"\n{KILL_AT_ENV}: killing the process at {point}, epoch {epoch + 1}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def temporary_name(path):
    """The name ``path`` is written under before the rename (same folder, same suffix, so that
    Keras accepts it: ``last.keras`` -> ``.last.tmp.keras``)."""
    folder, name = os.path.split(path)
    stem, dot, suffix = name.partition(".")
    return os.path.join(folder, f".{stem}.tmp{dot}{suffix}")


def _fsync(path, directory=False):
    """Flushes ``path`` (a file, or a folder's entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # a platform whose folders cannot be opened (Windows): nothing to flush
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, write, before_rename=None):
    """Writes ``path`` whole: ``write(tmp)`` writes the new content under ``temporary_name(path)``
    (e.g. ``model.save``), which is fsynced with its folder, then renamed to ``path``, and the
    folder fsynced again (the rename itself on the disk). ``before_rename`` runs just before the
    rename. Returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temporary_name(path)
    write(tmp)
    _fsync(tmp)
    _fsync(folder, directory=True)
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    _fsync(folder, directory=True)
    return path


def write_text(path, text, before_rename=None):
    """Writes ``text`` to ``path`` whole (``write_file``)."""

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return write_file(path, write, before_rename)


def write_bytes(path, content, before_rename=None):
    """Writes ``content`` (bytes) to ``path`` whole (``write_file``)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(content)

    return write_file(path, write, before_rename)


def read_rows(path):
    """(header, rows) of a history.csv, whole lines only; (["epoch"], []) for none."""
    if not os.path.exists(path):
        return ["epoch"], []
    with open(path, newline="") as f:
        text = f.read()
    if not text.endswith("\n"):  # a line cut by a kill (an older run's CSVLogger): drop it
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or ["epoch"])
    rows = [row for row in reader if row.get("epoch") not in (None, "", "epoch")]
    return header, rows


def write_rows(path, header, rows, before_rename=None):
    """Writes a history.csv whole (missing values as NA)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, restval="NA", extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue(), before_rename)


def append_history_row(path, epoch, logs, before_rename=None):
    """Adds epoch ``epoch``'s row to history.csv (new logged quantities become columns, sorted),
    rewriting the file whole."""
    header, rows = read_rows(path)
    logs = dict(logs or {})
    header += [key for key in sorted(logs) if key not in header]
    row = {"epoch": str(epoch)}
    for key, value in logs.items():
        try:
            row[key] = repr(float(value))
        except (TypeError, ValueError):
            row[key] = str(value)
    write_rows(path, header, rows + [row], before_rename)


def cut_history(run_dir, epochs_done):
    """Keeps in history.csv the rows of epochs ``0 .. epochs_done - 1`` only (the last row of
    each): the rows a resume state holds. Returns the number of rows dropped."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.exists(path):
        return 0
    header, rows = read_rows(path)
    kept = {}
    for row in rows:
        try:
            epoch = int(float(row["epoch"]))
        except ValueError:
            continue
        if epoch < epochs_done:
            kept[epoch] = row
    ordered = [kept[e] for e in sorted(kept)]
    if len(ordered) != len(rows):
        write_rows(path, header, ordered)
    return len(rows) - len(ordered)
