import numpy as np
import pytest
import tensorflow as tf

from pipelines.data import seg_augment


def coordinate_pair(height=48, width=64):
    """An image whose channels hold the pixel's row and column, and a label that is a function
    of them, so any geometric mismatch between image and label shows."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    label = ((rows // 8 + cols // 8) % 5).astype(np.uint8)[..., None]
    return tf.constant(image), tf.constant(label)


def label_of(image):
    """The label coordinate_pair assigns to an image pixel (image in [-1, 1])."""
    pixels = np.round((image + 1.0) * 127.5).astype(int)
    return (pixels[..., 0] // 8 + pixels[..., 1] // 8) % 5


def test_normalize_range():
    out = seg_augment.normalize(tf.constant([[[0, 127.5, 255]]])).numpy()
    np.testing.assert_allclose(out, [[[-1.0, 0.0, 1.0]]])


def test_train_preprocess_shapes_and_image_label_consistency():
    image, label = coordinate_pair()
    flipped = 0
    for i in range(12):
        x, y = seg_augment.train_preprocess(image, label, 32, min_scale=1.0, max_scale=1.0,
                                            seed=[i, 7])
        assert x.shape == (32, 32, 3) and x.dtype == tf.float32
        assert y.shape == (32, 32) and y.dtype == tf.int32
        x, y = x.numpy(), y.numpy()
        assert -1.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(label_of(x), y)  # crop and flip moved both alike
        flipped += x[0, 0, 1] > x[0, -1, 1]  # columns decrease left to right
    assert 0 < flipped < 12  # both flipped and unflipped crops occur


def test_same_seed_same_crop():
    image, label = coordinate_pair()
    a = seg_augment.train_preprocess(image, label, 32, seed=[3, 4])
    b = seg_augment.train_preprocess(image, label, 32, seed=[3, 4])
    c = seg_augment.train_preprocess(image, label, 32, seed=[5, 4])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_downscaled_image_is_padded_with_ignore_and_zero():
    image, label = coordinate_pair(48, 64)
    x, y = seg_augment.train_preprocess(image, label, 64, min_scale=0.5, max_scale=0.5,
                                        flip=False, seed=[1, 2])
    x, y = x.numpy(), y.numpy()
    # 24 x 32 of image inside a 64 x 64 crop: the rest is padding
    valid = y != 255
    assert valid.sum() == 24 * 32
    assert np.all(x[~valid] == 0.0)
    assert set(np.unique(y[valid])) <= set(range(5))


def test_random_scale_keeps_label_values_and_sizes():
    image, label = coordinate_pair(40, 60)
    sizes = set()
    for i in range(20):
        x, y = seg_augment.random_scale(image, label, 0.5, 2.0, step=0.25, seed=[i, 0])
        assert x.shape[:2] == y.shape[:2]
        sizes.add(int(y.shape[0]))
        assert set(np.unique(y.numpy())) <= set(range(5))  # nearest: no new values
        assert y.dtype == tf.uint8
    assert sizes <= {int(round(40 * (0.5 + 0.25 * k))) for k in range(7)}
    assert len(sizes) >= 3


def test_random_scale_up_then_crop_is_consistent():
    image, label = coordinate_pair(64, 64)
    x, y = seg_augment.train_preprocess(image, label, 32, min_scale=2.0, max_scale=2.0,
                                        flip=True, seed=[9, 9])
    x, y = x.numpy(), y.numpy()
    # at 2x, every label cell is 16 px wide: away from cell edges the image says the label
    inside = np.zeros_like(y, dtype=bool)
    predicted = label_of(x)
    for r in range(1, 31):
        for c in range(1, 31):
            inside[r, c] = len(set(y[r - 1:r + 2, c - 1:c + 2].ravel())) == 1
    assert inside.mean() > 0.5
    assert (predicted[inside] == y[inside]).mean() > 0.98


def test_eval_preprocess_pads_bottom_right():
    image, label = coordinate_pair(30, 40)
    x, y = seg_augment.eval_preprocess(image, label, 48)
    x, y = x.numpy(), y.numpy()
    assert x.shape == (48, 48, 3) and y.shape == (48, 48)
    np.testing.assert_array_equal(y[:30, :40], label.numpy()[..., 0])
    assert np.all(y[30:] == 255) and np.all(y[:, 40:] == 255)
    assert np.all(x[30:] == 0) and np.all(x[:, 40:] == 0)
    np.testing.assert_array_equal(label_of(x[:30, :40]), y[:30, :40])


def test_eval_preprocess_rejects_larger_images():
    image, label = coordinate_pair(30, 50)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)evaluation size 48.*2007_000123.*has shape.*30, 50, 3"):
        seg_augment.eval_preprocess(image, label, 48, tf.constant("2007_000123"))
