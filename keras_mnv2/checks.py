"""Argument checks shared by the builders: one clear ValueError naming the argument and the value.

Numpy scalars (``np.float32(0.35)``, ``np.int64(96)``) are accepted wherever a Python number is,
and come back as Python numbers (a float32 as its shortest decimal: 0.35, not 0.3499999940).
"""

import math
import numbers

import numpy as np

from keras_mnv2.errors import InputError


def _is_integer(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_))


def real(value, name, minimum=0, maximum=None, low_open=False, high_open=False):
    """``value`` as a finite Python float in [minimum, maximum] (ends open as asked; no maximum:
    any finite number above the minimum); ValueError naming ``name``."""
    if _is_real(value) and math.isfinite(float(value)):
        number = float(str(value)) if isinstance(value, np.floating) else float(value)
        if ((number > minimum or (number == minimum and not low_open))
                and (maximum is None or number < maximum
                     or (number == maximum and not high_open))):
            return number
    if maximum is None:
        expected = f"a number {'>' if low_open else '>='} {minimum:g} (and finite)"
    else:
        expected = (f"a number in {'(' if low_open else '['}{minimum:g}, {maximum:g}"
                    f"{')' if high_open else ']'}")
    raise InputError(f"{name} must be {expected}, got {value!r}")


def integer(value, name, minimum=None, maximum=None):
    """``value`` as a Python int within the bounds given; ValueError naming ``name``."""
    if _is_integer(value) and (minimum is None or value >= minimum) and (
            maximum is None or value <= maximum):
        return int(value)
    bounds = f" >= {minimum}" if minimum is not None else ""
    bounds += f" and <= {maximum}" if maximum is not None else ""
    raise InputError(f"{name} must be an integer{bounds}, got {value!r}")


def image_shape(input_shape, min_size, static=False, name="input_shape"):
    """A (height, width, channels) shape as a tuple of Python ints (None for a free side).

    Sides must be None (unless ``static``) or integers >= ``min_size``, channels an integer
    >= 1. A shape that looks channels-first ((3, 224, 224)) is reported as such.
    """
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__len__") \
            or len(input_shape) != 3:
        raise InputError(
            f"{name} must be (height, width, channels) (channels-last), got {input_shape!r}"
        )
    shape = []
    for i, side in enumerate(input_shape):
        if side is None and not static:
            shape.append(None)
        elif _is_integer(side) and side >= 1:
            shape.append(int(side))
        elif side is None:
            raise InputError(f"{name} needs static sides (no None), got {input_shape!r}")
        else:
            what = "channels" if i == 2 else "height and width"
            raise InputError(f"{name} {what} must be positive integers"
                             f"{'' if static or i == 2 else ' or None'}, got {input_shape!r}")
    height, width, channels = shape
    if height is not None and height <= 4 and (channels is None or channels > 4):
        raise InputError(
            f"{name} {input_shape!r} looks channels-first: keras_mnv2 models are channels-last, "
            f"(height, width, channels), e.g. {(width, channels, height)!r}"
        )
    for side in (height, width):
        if side is not None and side < min_size:
            raise InputError(f"{name} height and width must be at least {min_size} px, "
                             f"got {input_shape!r}")
    return tuple(shape)


def channels_last(keras):
    """Raises ValueError when ``keras`` (Keras 3 or tf_keras) is set to channels-first: the
    builders make channels-last models."""
    data_format = keras.backend.image_data_format()
    if data_format != "channels_last":
        raise InputError(
            "keras_mnv2 builds channels-last models, but the Keras image data format is "
            f"{data_format!r}: call keras.config.set_image_data_format('channels_last')"
        )
