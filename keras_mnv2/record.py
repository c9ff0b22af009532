"""Models that carry their builder and its arguments.

Every public builder (``MobileNetV2``, ``SSDLite``, ``DeepLabV3``) is a plain function wrapped by
``records_arguments``: it binds the call to the builder's signature (defaults filled in, so an
argument added to a builder later is recorded with no change here) and keeps the result on the
model. For Keras 3 the builders return a ``BuiltModel``, a functional ``keras.Model`` registered
with Keras (as keras-hub's ``Backbone``) whose ``get_config`` is the functional model's own
config plus that record; so ``model.save("x.keras")`` and ``keras.saving.load_model("x.keras")``
(after ``import keras_mnv2``, no ``custom_objects``) give back everything a plain functional
model keeps (the graph, the weights, and what was set after building: trainable flags,
regularizers, dtype policies), the record, and SSDLite's ``anchors`` (saved with the weights).
Every model the package makes through ``functional`` (quantized, folded, split copies) saves
that way; one without a record says so: ``builder_config`` returns None.

What the record holds (``builder_config(model)`` returns it as ``(builder, kwargs)``):
every argument of the call, numpy scalars as Python numbers and sequences as tuples, except
that where the weights came from (``weights``, ``backbone_weights``) is recorded as None: the
record describes the graph, the weights travel with the model (a rebuild must not load a file
that may not be there any more), and ``name`` is the model's name. A model built on a caller's
``input_tensor`` holds layers the builder did not make: it gets no record and saves as a plain
functional model. The tf_keras build (``framework="tf_keras"``, the QAT twin) carries the same
record in memory (tf_keras models are not saved to ``.keras`` here).
"""

import dataclasses
import functools
import importlib
import inspect
import numbers
import os

import keras
import numpy as np

from keras_mnv2.errors import InputError, MissingFileError

# Arguments saying where weights come from rather than what the graph is.
WEIGHT_ARGUMENTS = ("weights", "backbone_weights")
_PACKAGE = "keras_mnv2"
_ANCHORS = "anchors"  # the key of a detector's anchors among a BuiltModel's own saved variables


@dataclasses.dataclass(frozen=True)
class Record:
    """A builder and the keyword arguments that rebuild the model's graph."""

    builder: object
    arguments: dict


def _plain(value):
    """``value`` with numpy scalars as Python numbers and lists/tuples as tuples."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(str(value))  # np.float32(0.35) -> 0.35, not 0.3499999940395355
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _json(value):
    """The record as JSON (tuples as lists), for ``get_config``."""
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, numbers.Number)):
        return value
    raise TypeError(f"builder argument value {value!r} cannot be saved in a model config")


def records_arguments(builder):
    """Wraps a builder so that the model it returns carries ``Record(builder, arguments)``."""
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        model = builder(*args, **kwargs)
        arguments = {}
        for key, value in bound.arguments.items():
            if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            else:
                arguments[key] = value
        if arguments.get("input_tensor") is not None:
            return model  # built on the caller's graph: not the builder's alone
        for key in WEIGHT_ARGUMENTS:
            if key in arguments:
                arguments[key] = None
        if "name" in arguments:
            arguments["name"] = model.name
        arguments = _plain(arguments)
        if isinstance(model, BuiltModel):
            _json(arguments)  # fails now, not at save time, on an argument JSON cannot hold
        model._builder_record = Record(build, arguments)
        return model

    build.records_arguments = True
    return build


def builder_config(model):
    """``(builder, kwargs)`` that rebuild ``model``'s graph, or None when it has no record."""
    record = getattr(model, "_builder_record", None)
    if record is None:
        return None
    return record.builder, dict(record.arguments)


def with_record(model, source, **changes):
    """Gives ``model`` (e.g. a rewritten copy of ``source``) ``source``'s record with ``changes``
    applied; ``model`` must then be what the builder makes with those arguments."""
    found = builder_config(source)
    if found is not None:
        builder, arguments = found
        arguments.update(_plain(changes))
        arguments["name"] = model.name
        model._builder_record = Record(builder, arguments)
    return _with_labels(model, getattr(source, "labels", None))


def _with_labels(model, labels):
    """``model`` with ``labels`` (class names, one per output column) as ``model.labels``."""
    if labels is not None:
        model.labels = tuple(labels)
    return model


def resolve_builder(path):
    """The builder named ``path`` ("keras_mnv2.module.Function"); only keras_mnv2 builders
    wrapped by ``records_arguments`` are accepted, so a config cannot call other code."""
    module_name, _, attribute = str(path).rpartition(".")
    if module_name != _PACKAGE and not module_name.startswith(_PACKAGE + "."):
        raise InputError(f"builder {path!r} is not a keras_mnv2 builder")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise InputError(f"builder {path!r} not found in this keras_mnv2") from err
    if not getattr(builder, "records_arguments", False):
        raise InputError(f"{path!r} is not a keras_mnv2 builder")
    return builder


def functional(keras_module, inputs, outputs, name=None):
    """The model a builder returns: a ``BuiltModel`` for Keras 3, a functional tf_keras model
    for the twin."""
    if keras_module is keras:
        return BuiltModel(inputs, outputs, name=name)
    return keras_module.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BuiltModel(keras.Model):
    """A functional model made by a keras_mnv2 builder (or rewritten from one), saved as a plain
    functional model plus its builder record.

    ``get_config()`` is the functional config (every layer's own config, as Keras saves any
    functional model) with ``"builder": "keras_mnv2.<module>.<name>"`` and ``"arguments"``
    added when the model has a record; ``from_config`` rebuilds the graph from the functional
    config and gives it the record back. A config of an older keras_mnv2, the record alone,
    calls the builder. The ``anchors`` of a detector (``model.anchors``) are saved with the
    weights (``save_own_variables``), so they survive a round trip with or without a record.
    Its class names (``model.labels``, ``keras_mnv2.labels``) are saved in the config as
    ``"labels"``.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)

    def get_config(self):
        config = super().get_config()
        if getattr(self, "labels", None) is not None:  # class names (keras_mnv2.labels)
            config["labels"] = [None if n is None else str(n) for n in self.labels]
        record = getattr(self, "_builder_record", None)
        if record is None:
            return config
        builder = record.builder
        return {**config, "builder": f"{builder.__module__}.{builder.__name__}",
                "arguments": _json(record.arguments)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        labels = config.pop("labels", None)
        path = config.pop("builder", None)
        arguments = _plain(config.pop("arguments", None) or {})
        builder = None if path is None else resolve_builder(path)
        if builder is not None and "layers" not in config:  # the record alone (older files)
            return _with_labels(builder(**arguments), labels)
        model = super().from_config(config, custom_objects=custom_objects)
        if builder is not None:
            model._builder_record = Record(builder, arguments)
        return _with_labels(model, labels)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        anchors = getattr(self, "anchors", None)
        if anchors is not None:
            store[_ANCHORS] = np.asarray(anchors, np.float32)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _ANCHORS in keys:
            self.anchors = np.asarray(store[_ANCHORS], np.float32)
            store = {key: store[key] for key in keys if key != _ANCHORS}
        super().load_own_variables(store)


def load_keras_model(path):
    """A Keras 3 model from a .keras file (as the training driver writes), without compiling."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"model file not found: {path}")
    if not path.endswith(".keras"):
        raise InputError(f"expected a .keras model file, got {os.path.basename(path)}")
    import keras_mnv2.detection.losses  # noqa: F401  (registers the SSD losses a compiled model names)

    return keras.saving.load_model(path, compile=False)


def read_record(path):
    """``(builder path, arguments)`` recorded in a ``.keras`` file, read from its config without
    building the model; None when the file holds no record. Raises ValueError naming a file that
    is not a Keras zip archive."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise InputError(f"{path} is not a .keras model file ({err})") from err
    inner = config.get("config") or {}
    if config.get("registered_name") != f"{_PACKAGE}>BuiltModel" or "builder" not in inner:
        return None
    return inner["builder"], _plain(inner.get("arguments") or {})
