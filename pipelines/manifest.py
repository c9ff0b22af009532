"""The manifest that makes a synthetic dataset generator idempotent.

A generator writes ``root/manifest.json`` (its parameters) last, after every other file. On the
next call, a manifest holding the same parameters, with the files it names as required present,
means the dataset is already there and nothing is rewritten; a manifest with other parameters
means the folder is ours but stale, so it is removed together with the generated folders; no
manifest means an interrupted (or first) run, which is simply redone.
"""

import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"


def reuse_or_wipe(root, params, required=(), wipe=()):
    """True if ``root`` already holds the dataset of ``params``; else clears it and returns False.

    The dataset is there when ``root/manifest.json`` holds exactly ``params`` and every path in
    ``required`` (relative to ``root``) exists. Otherwise, if a manifest is there (a dataset of
    other parameters), the manifest and the folders in ``wipe`` (relative to ``root``) are
    removed, so no stale file survives.
    """
    root = Path(root)
    manifest = root / MANIFEST
    try:
        same = json.loads(manifest.read_text()) == params
    except (OSError, ValueError):
        same = False
    if same and all((root / path).exists() for path in required):
        return True
    if manifest.exists():  # ours, with other parameters: start from a clean slate
        manifest.unlink()
        for path in wipe:
            shutil.rmtree(root / path, ignore_errors=True)
    return False


def write_manifest(root, params):
    """Writes ``root/manifest.json``; call it last, so that an interrupted run is redone."""
    write_atomic(Path(root) / MANIFEST, json.dumps(params, indent=1))


def write_atomic(path, text):
    """Writes ``text`` to ``path`` whole, never half a file: ``keras_mnv2.files.write_text``
    (``a.json`` is written as ``.a.tmp.json``, fsynced and renamed)."""
    from keras_mnv2.files import write_text

    write_text(os.fspath(path), text)
