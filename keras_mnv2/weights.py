"""Weight transfer between models that share layer names (Keras 3 <-> Keras 3, or <-> tf_keras)."""

import numpy as np

from keras_mnv2.errors import InputError


def copy_weights(source, target, skip_missing=False):
    """Copies every weighted layer of ``source`` into the layer of the same name in ``target``.

    Works across Keras 3 and tf_keras, which is how the tf_keras twin used for QAT gets a trained
    model's weights. Raises ValueError naming the layer when a layer is missing from ``target``
    (unless ``skip_missing``) or when weight shapes differ. Returns the number of layers copied.
    """
    target_layers = {layer.name: layer for layer in _all_layers(target)}
    copied = 0
    for layer in _all_layers(source):
        weights = layer.get_weights()
        if not weights:
            continue
        other = target_layers.get(layer.name)
        if other is None:
            if skip_missing:
                continue
            raise InputError(f"layer {layer.name!r} of {source.name!r} is not in {target.name!r}")
        other_weights = other.get_weights()
        shapes = [np.shape(w) for w in weights]
        other_shapes = [np.shape(w) for w in other_weights]
        if shapes != other_shapes:
            raise InputError(
                f"layer {layer.name!r}: weight shapes differ, {shapes} in {source.name!r} vs "
                f"{other_shapes} in {target.name!r}"
            )
        other.set_weights(weights)
        copied += 1
    return copied


def _all_layers(model):
    """Layers of ``model``, descending into nested models."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers and hasattr(layer, "get_layer"):
            yield from _all_layers(layer)
        else:
            yield layer
