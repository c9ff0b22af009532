"""One weight-decay rule for every training job, the one the paper's training code uses.

TF-slim's ``mobilenet.training_scope`` (tensorflow/models, research/slim/nets/mobilenet/
mobilenet.py) puts ``slim.l2_regularizer(weight_decay)`` on ``slim.conv2d`` and sets
``weights_regularizer=None`` on ``slim.separable_conv2d``: the convolution kernels (the logits
are a 1x1 convolution there) are decayed, the depthwise kernels, biases and batch-norm
gamma/beta are not. ``l2_regularizer(wd)`` adds ``wd * sum(w^2) / 2`` to the loss.

Here that is a ``keras.regularizers.L2(wd / 2)`` on the kernel of every ``Conv2D`` and ``Dense``
layer, chosen by layer type: Keras names a depthwise kernel ``kernel`` too, so an optimizer's
decoupled decay with ``exclude_from_weight_decay(var_names=...)`` cannot tell the two apart.
"""

import keras

from keras_mnv2.errors import InputError


def decayed_layers(model):
    """The layers whose kernel the rule decays: every ``Conv2D`` and ``Dense`` (nested models
    included). ``DepthwiseConv2D`` is not a ``Conv2D`` subclass in Keras 3, so it is left out."""
    found = []

    def walk(layer):
        for sub in getattr(layer, "layers", ()):
            if isinstance(sub, (keras.layers.Conv2D, keras.layers.Dense)):
                found.append(sub)
            walk(sub)

    walk(model)
    return found


def add_weight_decay(model, weight_decay):
    """Adds ``weight_decay * sum(w^2) / 2`` over the conv and dense kernels of the built
    ``model`` to its losses (``model.losses``, which ``fit`` adds to the loss), in place; returns
    ``model``. ``weight_decay`` 0 leaves the model as it is."""
    weight_decay = float(weight_decay)
    if not weight_decay >= 0:
        raise InputError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not weight_decay:
        return model
    regularizer = keras.regularizers.L2(weight_decay / 2)
    for layer in decayed_layers(model):
        layer.kernel_regularizer = regularizer  # kept in the layer's config (saved models)
        layer._kernel.regularizer = regularizer  # the stored variable; Layer.losses reads it
    return model


def decayed_variables(model):
    """The trainable variables that carry a weight penalty (for tests and logs)."""
    return [v for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]
