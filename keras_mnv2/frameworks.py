"""One architecture, two Keras implementations.

Every builder in keras_mnv2 takes ``framework="keras"`` (Keras 3, the default) or
``framework="tf_keras"`` (Keras 2). The tf_keras build exists because TFMOT quantization-aware
training only accepts tf_keras models; both builds run through the same builder code, so the
architectures cannot drift apart.
"""

from keras_mnv2.errors import InputError

FRAMEWORKS = ("keras", "tf_keras")


def get_keras(framework="keras"):
    """Returns the Keras module for ``framework`` ("keras" or "tf_keras")."""
    if framework == "keras":
        import keras

        return keras
    if framework == "tf_keras":
        try:
            import tf_keras
        except ImportError as err:  # pragma: no cover - tf-keras is a declared dependency
            raise ImportError(
                "framework='tf_keras' needs the tf-keras package (pip install tf-keras)"
            ) from err
        return tf_keras
    raise InputError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")


def framework_of(model):
    """Tells which Keras built ``model``: "keras" or "tf_keras"."""
    import keras

    if isinstance(model, keras.Model):
        return "keras"
    try:
        import tf_keras

        if isinstance(model, tf_keras.Model):
            return "tf_keras"
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"expected a keras or tf_keras Model, got {type(model).__name__}")
