"""The one undecodable-image mechanism the three readers share (pipelines/data/decode.py)."""

import numpy as np
import tensorflow as tf

from pipelines.data import decode
from pipelines.data.skips import SkipLog

PNG = tf.io.encode_png(tf.fill([3, 5, 3], tf.constant(7, tf.uint8)))


def test_decode_or_empty_and_attempt_each():
    assert decode.decode_or_empty(PNG).shape == (3, 5, 3)
    assert decode.decode_or_empty(tf.constant(b"not an image")).shape == (0, 0, 3)
    # a group whose rows all fail: zeros with the unknown height and width 0
    images, ok = decode.attempt_each(decode.decode_image, (tf.constant([b"x", b"y"]),))
    assert images.shape == (2, 0, 0, 3) and ok.numpy().tolist() == [False, False]
    images, ok = decode.attempt_each(lambda c: tf.image.resize(decode.decode_image(c), [4, 4]),
                                     (tf.stack([PNG, tf.constant(b"x"), PNG]),))
    assert ok.numpy().tolist() == [True, False, True] and not images[1].numpy().any()
    np.testing.assert_allclose(images[0].numpy(), 7.0)


def test_record_skips_names_the_failed_rows_with_the_reason():
    log = SkipLog("val")
    names = tf.constant(["", "b.jpg", ""])
    assert int(decode.record_skips(log, names)) == 0
    decode.record_skips(log, tf.constant(["", ""]))  # nothing to record: no Python call
    decode.record_skips(log, tf.constant(["c.jpg"]), contents=tf.constant([b"junk"]))
    assert log.files == ["b.jpg", "c.jpg"] and log.events == 2
    assert log.reasons["b.jpg"] == "undecodable image"
    assert log.reasons["c.jpg"].startswith("undecodable image (Unknown image file format")
