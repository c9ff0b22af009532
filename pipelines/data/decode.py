"""Undecodable images, one mechanism for the three readers (COCO, VOC, ImageNet).

Detecting: ``attempt_each`` runs a decode (or decode-and-crop) on each row inside the graph and
says which rows failed; ``decode_or_empty`` is its one-image form (a 0 x 0 x 3 image where
decoding fails). Recording: ``record_skips`` hands the names of the failed rows to a
``skips.SkipLog`` (counted, named, logged once per file). COCO and ImageNet record with it; VOC
records in the check it runs on each mask anyway (where it must raise instead when skipping is
off). No reader needs Python to decode, so tf.data service workers can run them.
"""

import tensorflow as tf


def decode_image(contents):
    """Any supported format (JPEG incl. CMYK/grayscale, PNG, GIF, BMP, WebP) as RGB uint8."""
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def attempt_each(fn, args):
    """``fn`` on each row of ``args`` (a tuple of tensors with a leading dimension n): the
    results stacked, [n, ...], zeros where ``fn`` raised, and ok [n] (False there). All in graph.

    ``ignore_errors`` on a small dataset over the rows is the graph's only try/except; unlike a
    py_function it also runs on tf.data service workers. Its set-up costs about as much as
    decoding a JPEG, so a pipeline that can calls it once per group of images (ImageNet: 16).
    A dimension of ``fn``'s result that is not static (an image's height and width) is 0 in the
    zeros of a batch where every row failed.
    """
    n = tf.shape(args[0])[0]
    rows = tf.data.Dataset.from_tensor_slices((tf.range(n), args))
    tried = rows.map(lambda i, a: (i, fn(*a))).ignore_errors().batch(tf.cast(n, tf.int64))
    spec = tried.element_spec[1]
    empty = tf.data.Dataset.from_tensors(
        (tf.zeros([0], tf.int32), tf.zeros([0] + [d or 0 for d in spec.shape[1:].as_list()],
                                           spec.dtype)))
    index, values = tried.concatenate(empty).take(1).get_single_element()
    index = index[:, None]
    ok = tf.scatter_nd(index, tf.ones_like(index[:, 0], tf.bool), [n])
    return tf.scatter_nd(index, values, tf.concat([[n], tf.shape(values)[1:]], 0)), ok


def decode_or_empty(contents):
    """One image's bytes -> RGB uint8 [H, W, 3], or [0, 0, 3] where decoding fails."""
    images, _ = attempt_each(decode_image, (contents[None],))
    return images[0]


def _decoder_message(contents):
    """Why ``contents`` does not decode, in the decoder's words (for the skip log)."""
    try:
        decode_image(contents)
        return "decoded to an empty image"
    except Exception as e:  # noqa: BLE001 - only to report why
        return str(e).splitlines()[0].split("}} ")[-1].split(" [Op:")[0]


def record_skips(skip_log, names, contents=None, reason="undecodable image"):
    """Graph op: hands the non-empty ``names`` (string [n]; "" for a row that is not skipped)
    to ``skip_log`` with ``reason``; with ``contents`` (the rows' bytes) the reason also gives
    the decoder's message. Runs Python only when some name is non-empty. Returns an int32 to
    hang a control dependency on."""

    def record(values, data=None):
        for i, name in enumerate(values.numpy()):
            if not name:
                continue
            why = reason if data is None else f"{reason} ({_decoder_message(data[i])})"
            skip_log.add(name, why)
        return 0

    inputs = [names] if contents is None else [names, contents]
    return tf.cond(tf.reduce_any(tf.strings.length(names) > 0),
                   lambda: tf.ensure_shape(tf.py_function(record, inputs, tf.int32), []),
                   lambda: tf.constant(0))
