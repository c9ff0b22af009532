"""One name space of array functions for the box math, whichever tensors it is handed.

The model side (losses, decoding) runs ``keras.ops`` on the Keras backend in use. Target
encoding runs inside ``tf.data`` graphs, whose tensors are TensorFlow's whatever the Keras backend
is: there, under JAX or torch, the same box math must run TensorFlow ops. ``ops_for`` picks the
one that fits the values; the shared functions carry ``keras.ops``' names and signatures.
"""

import sys
import types

import keras


def _tf_namespace(tf):
    return types.SimpleNamespace(
        cast=tf.cast,
        convert_to_tensor=tf.convert_to_tensor,
        stack=lambda xs, axis=0: tf.stack(xs, axis=axis),
        unstack=lambda x, num=None, axis=0: tf.unstack(x, num=num, axis=axis),
        exp=tf.exp,
        log=tf.math.log,
        maximum=tf.maximum,
        minimum=tf.minimum,
        clip=tf.clip_by_value,
    )


def is_tf_tensor(value):
    """True for TensorFlow tensors (eager or in a graph); never imports TensorFlow itself."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.is_tensor(value)


def ops_for(*values):
    """``keras.ops``, or TensorFlow's equivalents when a value is a TF tensor and Keras runs
    another backend (a ``tf.data`` map under JAX or torch)."""
    if keras.backend.backend() != "tensorflow" and any(is_tf_tensor(v) for v in values):
        return _tf_namespace(sys.modules["tensorflow"])
    return keras.ops


def concrete_numpy(value):
    """``value`` as a numpy array when it holds concrete numbers (eager), None while it is being
    traced (a ``tf.function``, ``jax.jit``): checks on values can run only in the first case."""
    backend = keras.backend.backend()
    if is_tf_tensor(value):
        tf = sys.modules["tensorflow"]
        return value.numpy() if tf.executing_eagerly() and hasattr(value, "numpy") else None
    if backend == "jax":
        import jax

        if isinstance(value, jax.core.Tracer):
            return None
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    try:
        return keras.ops.convert_to_numpy(value)
    except Exception:  # a symbolic value of any kind
        return None
