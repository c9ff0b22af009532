"""Officially trained models by name (keras-hub's presets): ``MobileNetV2.from_preset(name)``,
``SSDLite.from_preset(name)``, ``DeepLabV3.from_preset(name)`` and ``keras_mnv2.presets()``, the
table of names with the publishers' addresses.

A preset's file is downloaded once through Keras' own file cache (``keras.utils.get_file``,
under ``$KERAS_HOME/models/keras_mnv2``), converted once (``keras_mnv2.convert``) and the
converted ``.keras`` kept beside it; later calls read that. A download is written under a
temporary name and kept only once it has converted: a refused connection, a wrong checksum or a
cut archive leaves nothing in the cache. Offline, the error names the address and where to put
the file. A local file or folder works wherever a name does (an archive as published, its
unpacked folder, a checkpoint prefix, a ``.tflite``, ``.h5`` or ``.keras`` file).

Every model comes with its class names (``model.labels``, ``keras_mnv2.labels``): ImageNet's
for the classifiers, the Object Detection API's COCO ids for SSDLite, PASCAL VOC's for DeepLab.
``KERAS_MNV2_PRESET_BASE`` (or ``url=``) points the downloads at another server (a mirror).
"""

import dataclasses
import os
import re
import sys
import tarfile
import tempfile
import types
import zlib

from keras_mnv2.errors import InputError, MissingFileError
from keras_mnv2.files import write_file

BASE_ENV = "KERAS_MNV2_PRESET_BASE"
KINDS = {"classifier": "MobileNetV2", "ssdlite": "SSDLite", "deeplab": "DeepLabV3"}
_ARCHIVES = (".tar.gz", ".tgz", ".tar")


class DownloadError(InputError):
    """A preset's file could not be downloaded whole; nothing was cached."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """One row of the table: a name, what it is, the publisher's address and published facts."""

    name: str
    kind: str  # "classifier", "ssdlite" or "deeplab"
    url: str  # the publisher's address
    trained_on: str
    accuracy: str  # as published, with where
    input_size: int
    parameters: int  # count_params() of the converted model
    dataset: str  # its class names: "imagenet", "coco" or "voc"
    sha256: str = None  # where the publisher gives one (none of these publishers does)
    options: tuple = ()  # (key, value) pairs for the converter

    @property
    def filename(self):
        return self.url.rsplit("/", 1)[-1]

    def address(self, url=None):
        """Where to download from: ``url``, else ``$KERAS_MNV2_PRESET_BASE/<file name>``, else
        the publisher's address."""
        base = os.environ.get(BASE_ENV)
        return url or (f"{base.rstrip('/')}/{self.filename}" if base else self.url)


# ----------------------------------------------------------------------------------------------
# The table

SLIM_URL = "https://storage.googleapis.com/mobilenet_v2/checkpoints/mobilenet_v2_{}_{}.tgz"
KERAS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{}_{}.h5")
SSDLITE_URL = ("http://download.tensorflow.org/models/object_detection/"
               "ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz")
DEEPLAB_URL = "http://download.tensorflow.org/models/{}.tar.gz"
# TF-slim's table (research/slim/nets/mobilenet/README.md): ImageNet top-1 / top-5 of each
# published checkpoint; keras.applications' files were converted from these checkpoints.
SLIM_ACCURACY = {
    (1.4, 224): (75.0, 92.5), (1.3, 224): (74.4, 92.1),
    (1.0, 224): (71.8, 91.0), (1.0, 192): (70.7, 90.1), (1.0, 160): (68.8, 89.0),
    (1.0, 128): (65.3, 86.9), (1.0, 96): (60.3, 83.2),
    (0.75, 224): (69.8, 89.6), (0.75, 192): (68.7, 88.9), (0.75, 160): (66.4, 87.3),
    (0.75, 128): (63.2, 85.3), (0.75, 96): (58.8, 81.6),
    (0.5, 224): (65.4, 86.4), (0.5, 192): (63.9, 85.4), (0.5, 160): (61.0, 83.2),
    (0.5, 128): (57.7, 80.8), (0.5, 96): (51.2, 75.8),
    (0.35, 224): (60.3, 82.9), (0.35, 192): (58.2, 81.2), (0.35, 160): (55.7, 79.1),
    (0.35, 128): (50.8, 75.0), (0.35, 96): (45.5, 70.4),
}
# count_params() of MobileNetV2(alpha) with 1000 and 1001 classes (any input size).
_CLASSIFIER_PARAMETERS = {0.35: (1691208, 1692489), 0.5: (1987224, 1988505),
                          0.75: (2663064, 2664345), 1.0: (3538984, 3540265),
                          1.3: (5431048, 5432713), 1.4: (6156712, 6158505)}


def _table():
    rows = []
    for (alpha, size), (top1, top5) in SLIM_ACCURACY.items():
        accuracy = f"top-1 {top1}, top-5 {top5} (TF-slim)"
        rows.append(Preset(
            f"mobilenet_v2_{alpha}_{size}", "classifier", SLIM_URL.format(alpha, size),
            "ImageNet, 1001 classes (background first)", accuracy, size,
            _CLASSIFIER_PARAMETERS[alpha][1], "imagenet", options=(("input_size", size),)))
        rows.append(Preset(
            f"mobilenet_v2_{alpha}_{size}_keras", "classifier", KERAS_URL.format(alpha, size),
            "ImageNet, 1000 classes (keras.applications)", accuracy.replace(
                "(TF-slim)", "(TF-slim's checkpoint it was converted from)"), size,
            _CLASSIFIER_PARAMETERS[alpha][0], "imagenet",
            options=(("alpha", alpha), ("input_size", size))))
    rows.append(Preset(
        "ssdlite_mobilenet_v2_coco", "ssdlite", SSDLITE_URL,
        "COCO, 90 ids (TF Object Detection API)", "COCO mAP 22 (TF1 detection model zoo)", 300,
        4551295, "coco", options=(("input_size", 300),)))
    rows.append(Preset(
        "deeplabv3_mnv2_pascal_train_aug", "deeplab",
        DEEPLAB_URL.format("deeplabv3_mnv2_pascal_train_aug_2018_01_29"),
        "PASCAL VOC 2012 train_aug (COCO-pretrained)",
        "mIoU 75.32 (val, OS 16, one scale; DeepLab model zoo)", 513, 2146645, "voc",
        options=(("input_size", 513), ("output_stride", 16))))
    rows.append(Preset(
        "deeplabv3_mnv2_dm05_pascal_trainaug", "deeplab",
        DEEPLAB_URL.format("deeplabv3_mnv2_dm05_pascal_trainaug_2018_10_01"),
        "PASCAL VOC 2012 train_aug (COCO-pretrained), depth multiplier 0.5",
        "mIoU 70.19 (val, OS 16, one scale; DeepLab model zoo)", 513, 714325, "voc",
        options=(("input_size", 513), ("output_stride", 16))))
    return {row.name: row for row in rows}


PRESETS = _table()


class PresetTable(tuple):
    """``presets()``'s rows (``Preset``), shown as a text table."""

    COLUMNS = (("name", "name"), ("kind", "kind"), ("trained on", "trained_on"),
               ("published accuracy", "accuracy"), ("input", "input_size"),
               ("parameters", "parameters"), ("address", "url"))

    def __str__(self):
        cells = [[title for title, _ in self.COLUMNS]] + [
            [f"{getattr(row, key):,}" if key == "parameters" else str(getattr(row, key))
             for _, key in self.COLUMNS] for row in self]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                 for line in cells]
        return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])

    __repr__ = __str__


def table(kind=None):
    """The presets (all, or those of ``kind``: "classifier", "ssdlite", "deeplab") as a
    ``PresetTable``: name, kind, what it was trained on, the published accuracy, input size,
    parameters and the publisher's address. ``keras_mnv2.presets()`` is this function."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    return PresetTable(row for row in PRESETS.values() if kind in (None, row.kind))


# ----------------------------------------------------------------------------------------------
# Loading


def short_name(preset):
    """A preset's name, or a local file's name without its suffixes (for output folders)."""
    name = os.path.basename(os.path.normpath(os.fspath(preset)))
    for suffix in _ARCHIVES + (".tflite", ".keras", ".h5", ".index"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def cache_dir():
    """Where presets are kept: ``$KERAS_HOME/models/keras_mnv2`` (default ``~/.keras/...``)."""
    from keras_mnv2.mobilenet_v2 import keras_cache_dir

    return os.path.join(keras_cache_dir(), "models", "keras_mnv2")


def load(preset, kind=None, url=None):
    """The model of ``preset``: a name of ``presets()`` (downloaded and converted once, then
    read from the cache) or the path of a local file or folder (converted each call). ``kind``
    ("classifier", "ssdlite", "deeplab") refuses a preset of another kind; ``url`` downloads a
    named preset from there instead (a mirror; also ``$KERAS_MNV2_PRESET_BASE``)."""
    entry = preset if isinstance(preset, Preset) else PRESETS.get(str(preset))
    if entry is None:
        path = os.fspath(preset)
        if not (os.path.exists(path) or os.path.exists(path + ".index")):
            raise MissingFileError(
                f"{path!r} is neither a preset name (keras_mnv2.presets(); e.g. "
                f"'mobilenet_v2_1.0_224', 'ssdlite_mobilenet_v2_coco') nor a local file or "
                "folder")
        model = from_file(path)
        _check_kind(model_kind(model), kind, path)
        return model
    _check_kind(entry.kind, kind, entry.name)
    return _cached(entry, url)


def loader(kind):
    """The ``from_preset`` of the builder of ``kind`` (``MobileNetV2.from_preset``, ...)."""
    builder = KINDS[kind]

    def from_preset(preset, url=None):
        return load(preset, kind=kind, url=url)

    from_preset.__qualname__ = from_preset.__name__ = f"{builder}.from_preset"
    from_preset.__doc__ = (
        f"A ``{builder}`` with official weights and class names (``model.labels``).\n\n"
        f"``preset``: a name of ``keras_mnv2.presets('{kind}')``, downloaded once into Keras' "
        "cache and converted once, or the path of a local file or folder (an archive as "
        "published, a checkpoint, a .tflite, .h5 or .keras file). ``url``: download from there "
        "instead (also ``$KERAS_MNV2_PRESET_BASE``). See ``keras_mnv2.presets``.")
    return from_preset


def model_kind(model):
    """"classifier", "ssdlite" or "deeplab" from a keras_mnv2 model's builder record (None
    without one)."""
    from keras_mnv2.record import builder_config

    found = builder_config(model)
    names = {builder: kind for kind, builder in KINDS.items()}
    return None if found is None else names.get(found[0].__name__)


def _check_kind(found, wanted, what):
    if wanted is None or found == wanted:
        return
    if found is None:
        raise InputError(f"{what!r} is not a model of a keras_mnv2 builder: load it with "
                         "keras_mnv2.presets.load")
    raise InputError(f"{what!r} is {'an' if found == 'ssdlite' else 'a'} {found} model: load "
                     f"it with keras_mnv2.{KINDS[found]}.from_preset, not "
                     f"{KINDS[wanted]}.from_preset")


def _cached(entry, url):
    """The cached conversion of ``entry``, else its download (or the file already there)
    converted and cached; nothing is kept when anything fails."""
    from keras_mnv2.record import load_keras_model

    folder = cache_dir()
    converted = os.path.join(folder, entry.name + ".keras")
    if os.path.exists(converted):
        return load_keras_model(converted)
    os.makedirs(folder, exist_ok=True)
    archive = os.path.join(folder, entry.filename)
    downloaded = None if os.path.exists(archive) else _download(entry, url, folder)
    try:
        model = from_file(downloaded or archive, entry, entry.filename)
    except BaseException as err:
        if downloaded is not None and os.path.exists(downloaded):
            os.remove(downloaded)
        if isinstance(err, BrokenArchive):
            if downloaded:
                raise DownloadError(f"preset {entry.name!r}: the download from "
                                    f"{entry.address(url)} is broken ({err}); nothing was "
                                    "cached") from err
            raise InputError(f"preset {entry.name!r}: {archive} is broken ({err}); delete it "
                             "to download it again") from err
        raise
    if downloaded:
        os.replace(downloaded, archive)
    write_file(converted, model.save)  # a temporary name, fsynced, then renamed
    return model


def _download(entry, url, folder):
    """``entry``'s file fetched by ``keras.utils.get_file`` under a temporary name in
    ``folder`` (checked against its sha256 where it has one); its path."""
    import keras

    address = entry.address(url)
    part = f".part{os.getpid()}-{entry.filename}"  # hidden; its suffix still says the format
    try:
        return keras.utils.get_file(part, address, cache_subdir=folder, file_hash=entry.sha256,
                                    force_download=True)
    except BaseException as err:
        if os.path.exists(os.path.join(folder, part)):
            os.remove(os.path.join(folder, part))  # get_file keeps a file with a wrong hash
        if isinstance(err, KeyboardInterrupt):
            raise
        if "hash" in str(err):
            raise DownloadError(f"preset {entry.name!r}: the file from {address} does not "
                                f"match its sha256 {entry.sha256} (broken or changed); nothing "
                                "was cached") from err
        raise DownloadError(
            f"preset {entry.name!r}: could not download {address} ({err}). Offline, fetch "
            f"that file elsewhere and put it at {os.path.join(folder, entry.filename)}, or "
            f"load it from where it is: from_preset('path/to/{entry.filename}')") from err


# ----------------------------------------------------------------------------------------------
# Converting a local file


class BrokenArchive(InputError):
    """An archive that cannot be read to its end."""


def from_file(path, entry=None, filename=None):
    """A keras_mnv2 model with its class names from a local file or folder: a publisher's
    archive (.tar.gz / .tgz), a folder holding a checkpoint or a .tflite file, a checkpoint
    prefix, a .tflite, keras.applications .h5 or .keras file. ``entry`` (default: the preset
    whose file has this name, if any) gives the converter's settings and the class names;
    ``filename`` is the name that says the format (default the path's)."""
    from keras_mnv2 import convert
    from keras_mnv2.record import load_keras_model

    path = os.fspath(path)
    filename = filename or os.path.basename(path)
    entry = entry or next((row for row in PRESETS.values() if row.filename == filename), None)
    if filename.endswith(".keras"):
        return load_keras_model(path)
    if filename.endswith(_ARCHIVES):
        with tempfile.TemporaryDirectory() as folder:
            _extract(path, folder)
            return _from_folder(folder, entry, path)
    if os.path.isdir(path):
        return _from_folder(path, entry, path)
    if filename.endswith(".h5"):
        return _labelled(_from_keras_h5(path, entry, filename), entry)
    options = dict(entry.options) if entry else {}
    kwargs = {} if path.endswith(".tflite") else {
        "input_size": options.get("input_size"), "output_stride": options.get("output_stride")}
    return _labelled(convert.load(path, **kwargs), entry, path)


def _extract(path, folder):
    try:
        with tarfile.open(path) as archive:
            archive.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise BrokenArchive(f"{os.path.basename(path)} is not a whole tar archive: "
                            f"{type(err).__name__}: {err}") from err


def _from_folder(folder, entry, shown):
    """The model in an unpacked archive: its checkpoint, else its .tflite, else its .h5."""
    found = {".index": [], ".tflite": [], ".h5": []}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            for suffix, paths in found.items():
                if name.endswith(suffix):
                    paths.append(os.path.join(root, name[:-len(".index")] if suffix == ".index"
                                              else name))
    for suffix, paths in found.items():
        if len(paths) > 1:
            raise InputError(f"{shown} holds {len(paths)} {suffix} files ("
                             f"{', '.join(os.path.basename(p) for p in paths[:3])}): name one")
        if paths:
            return from_file(paths[0], entry)
    raise InputError(f"{shown} holds no TF checkpoint (.index), .tflite or .h5 file")


def _from_keras_h5(path, entry, filename):
    """A keras.applications MobileNetV2 weight file (alpha and size from the preset or the
    file's name, ``..._{alpha}_{rows}[_no_top].h5``)."""
    from keras_mnv2.mobilenet_v2 import MobileNetV2

    options = dict(entry.options) if entry else {}
    found = re.search(r"_(\d+(?:\.\d+)?)_(\d+)(_no_top)?\.h5$", filename)
    if not options and not found:
        raise InputError(f"{path}: not a keras.applications MobileNetV2 file name (..._<alpha>_"
                         "<rows>.h5): its width and input size are unknown")
    alpha = float(options.get("alpha") or found.group(1))
    size = int(options.get("input_size") or found.group(2))
    top = not (found and found.group(3))
    return MobileNetV2(alpha=alpha, input_shape=(size, size, 3), include_top=top, weights=path)


def _labelled(model, entry, path=None):
    """``model`` with the class names of its preset, else those a .tflite file carries in its
    metadata, else the official set its kind and class count fit (none: left without)."""
    from keras_mnv2 import labels

    kind = model_kind(model)
    if kind is None or (kind == "classifier" and len(model.output.shape) != 2):
        return model
    columns = labels.class_columns(model)
    names = None
    if entry is not None:
        names = labels.official_labels(entry.dataset, columns)
    if names is None and path is not None and path.endswith(".tflite"):
        from keras_mnv2.deploy import metadata

        with open(path, "rb") as f:
            names = metadata.labels(f.read())
        if names is not None and kind == "ssdlite":
            names = ["background"] + names  # the metadata leaves it out
        if names is not None and len(names) != columns:
            names = None
    if names is None:
        names = labels.official_labels(labels.dataset_for(kind, columns), columns)
    if names is not None:
        model.labels = tuple(names)
    return model


# ``keras_mnv2.presets()`` is the table while ``keras_mnv2.presets.load`` stays this module's
# function: a module one can call, so the two names do not shadow each other.
class _CallableModule(types.ModuleType):
    def __call__(self, kind=None):
        return table(kind)


sys.modules[__name__].__class__ = _CallableModule
