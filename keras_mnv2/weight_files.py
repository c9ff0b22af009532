"""The ``weights=`` argument of the builders: a weights file of any kind this package reads,
loaded into a model already built (``.weights.h5``, keras.applications' legacy ``.h5``,
``.keras``, and the official ``.tflite`` files and TF1 checkpoints of ``keras_mnv2.official``)."""

import os
import re

from keras_mnv2 import official
from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.spec import block_plan
from keras_mnv2.split import split_blocks, split_expansion
from keras_mnv2.weights import copy_weights


def load_weights_file(model, path, unsplit=None):
    """Loads a .weights.h5, legacy .h5 or .keras file into ``model``.

    Legacy .h5 files (keras.applications, tf_keras) load by layer order, as keras.applications
    loads them; .weights.h5 files by layer name; .keras files by layer name through
    ``copy_weights``. A model with split-expansion blocks (paper section 5.1) cannot take a file
    of the whole-block form directly: ``unsplit()`` then builds the whole-block model, the file
    loads into it, and ``keras_mnv2.split.split_expansion`` slices its weights into ``model``.
    Raises FileNotFoundError or ValueError naming the file (missing, wrong extension, not an
    HDF5 / Keras zip file).
    """
    import zipfile

    import h5py

    path = os.fspath(path)
    name = os.path.basename(path)
    if official.is_official_path(path):  # an official .tflite file or TF1 checkpoint
        if not os.path.exists(path) and not os.path.exists(path + ".index"):
            raise MissingFileError(f"weights file not found: {path}")
        official.load_into(model, path)
        return
    if not os.path.exists(path):
        raise MissingFileError(f"weights file not found: {path}")
    if path.endswith(".keras"):
        import keras

        if not zipfile.is_zipfile(path):
            raise InputError(f"weights file {path} is not a .keras model file (not a zip "
                             "archive: corrupt, truncated or another format)")
        try:
            source = keras.saving.load_model(path, compile=False)
        except Exception as err:  # keras says little more than "File not found" here
            raise InputError(f"weights file {path} could not be loaded as a Keras model: "
                             f"{type(err).__name__}: {err}") from err
        if unsplit is not None and not _has_split_layers(layer.name for layer in source.layers):
            source = split_expansion(source, _split_counts(model))
        copy_weights(source, model)
        return
    if not (path.endswith(".weights.h5") or path.endswith(".h5")):
        raise InputError("weights file must end in .weights.h5, .h5 or .keras (or be an official "
                         f".tflite file or TF checkpoint prefix), got {name}")
    if not h5py.is_hdf5(path):
        raise InputError(f"weights file {path} is not an HDF5 file (corrupt, truncated or "
                         "another format)")
    if unsplit is not None:
        with h5py.File(path, "r") as f:
            keys = []
            f.visit(keys.append)
        if not _has_split_layers(key.split("/")[-1] for key in keys) and not _has_split_layers(
                part for key in keys for part in key.split("/")):
            whole = unsplit()
            whole.load_weights(path)
            copy_weights(split_expansion(whole, _split_counts(model)), model)
            return
    model.load_weights(path)


def _has_split_layers(names):
    return any(re.fullmatch(r"(Conv1|block_\d+_expand)_s\d+", name) for name in names)


def _split_counts(model):
    """Split counts per block of a model in split form (1 for whole blocks)."""
    found = split_blocks(model)
    return tuple(found.get("expanded_conv_" if block_id == 0 else f"block_{block_id}_", 1)
                 for block_id, *_ in block_plan())
