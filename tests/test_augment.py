import numpy as np
import pytest
import tensorflow as tf

from pipelines.data import augment

H, W = 60, 100
# pixel rows 15..44, cols 20..59: a white rectangle on black
BOX = np.array([15 / H, 20 / W, 45 / H, 60 / W], np.float32)


def element(boxes=(BOX,), labels=(3,), crowd=(False,), image=None):
    if image is None:
        image = np.zeros((H, W, 3), np.uint8)
        image[15:45, 20:60] = 255
    return {
        "image": tf.constant(image),
        "boxes": tf.constant(np.reshape(boxes, (-1, 4)), tf.float32),
        "labels": tf.constant(labels, tf.int32),
        "is_crowd": tf.constant(crowd, tf.bool),
        "image_id": tf.constant(42, tf.int64),
    }


def numpy(e):
    return {k: v.numpy() for k, v in e.items()}


def seeds(n):
    return [tf.constant([7, i], tf.int64) for i in range(n)]


def pixel_box(box, shape):
    """Normalized box -> integer pixel (top, left, bottom, right), asserting it is pixel exact."""
    scaled = np.asarray(box, np.float64) * [shape[0], shape[1], shape[0], shape[1]]
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)
    return np.round(scaled).astype(int)


def white_fraction(image, box):
    t, l, b, r = box
    return (image[t:b, l:r] == 255).all(axis=-1).mean()


def test_flip_maps_a_box_exactly():
    out = numpy(augment.random_flip(element(), probability=1.0))
    one = np.float32(1)
    np.testing.assert_array_equal(out["boxes"], [[BOX[0], one - BOX[3], BOX[2], one - BOX[1]]])
    np.testing.assert_array_equal(out["image"], element()["image"].numpy()[:, ::-1])
    assert white_fraction(out["image"], pixel_box(out["boxes"][0], out["image"].shape)) == 1
    same = numpy(augment.random_flip(element(), probability=0.0))
    np.testing.assert_array_equal(same["boxes"], [BOX])
    assert same["image_id"] == 42


def test_expand_keeps_the_box_on_the_rectangle():
    for seed in seeds(5):
        out = numpy(augment.random_expand(element(), seed, probability=1.0))
        h, w = out["image"].shape[:2]
        assert H <= h <= 4 * H and W <= w <= 4 * W
        box = pixel_box(out["boxes"][0], out["image"].shape)
        assert white_fraction(out["image"], box) == 1
        # every white pixel is inside the box; the rest of the canvas is the mean pixel
        assert (out["image"] == 255).all(-1).sum() == 30 * 40
        fill = np.round(augment.MEAN_RGB).astype(np.uint8)
        assert (out["image"] == fill).all(-1).sum() == h * w - H * W
    unchanged = numpy(augment.random_expand(element(), seeds(1)[0], probability=0.0))
    np.testing.assert_array_equal(unchanged["image"], element()["image"].numpy())


def test_iou_crop_keeps_box_image_correspondence():
    cropped = 0
    for seed in seeds(30):
        out = numpy(augment.random_iou_crop(element(), seed))
        h, w = out["image"].shape[:2]
        cropped += (h, w) != (H, W)
        assert out["boxes"].min(initial=0) >= 0 and out["boxes"].max(initial=1) <= 1
        assert len(out["boxes"]) == len(out["labels"]) == len(out["is_crowd"])
        if len(out["boxes"]):
            box = pixel_box(out["boxes"][0], out["image"].shape)
            assert white_fraction(out["image"], box) == 1
            assert (out["image"] == 255).all(-1).sum() == (box[2] - box[0]) * (box[3] - box[1])
            assert out["labels"].tolist() == [3]
        else:  # the centre left the crop, and with it the box
            assert h * w < H * W
    assert cropped >= 20  # the whole image is one of up to 7 equally likely choices


def iou(a, b):
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("min_iou", [0.5, 0.7])
def test_crop_window_meets_the_minimum_iou(min_iou):
    boxes = tf.constant([BOX, [0.0, 0.8, 0.2, 1.0]], tf.float32)
    ious, wholes = [], 0
    for seed in seeds(20):
        top, left, h, w = augment.sample_crop_window((H, W, 3), boxes, seed, min_ious=(min_iou,))
        window = np.array([top / H, left / W, (top + h) / H, (left + w) / W])
        assert top == int(top) and left == int(left) and top + h <= H and left + w <= W
        if (h, w) == (H, W):
            wholes += 1
            continue
        assert 0.3 * H - 0.5 <= h and 0.3 * W - 0.5 <= w and 0.5 <= (w / h) <= 2
        ious.append(max(iou(window, b) for b in boxes.numpy()))
    assert ious and min(ious) >= min_iou - 1e-6
    assert 0 < wholes < 20  # the whole image is one of the two choices


def test_crop_of_an_image_without_boxes():
    out = numpy(augment.random_iou_crop(element(boxes=np.zeros((0, 4)), labels=[], crowd=[]),
                                        seeds(1)[0]))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_degenerate_boxes_dropped_with_their_labels():
    e = element(boxes=[BOX, [0.5, 0.5, 0.5, 0.7], [0.1, 0.1, 0.3, 0.1005]], labels=[1, 2, 3],
                crowd=[False, True, True])
    out = numpy(augment.drop_degenerate(e))
    np.testing.assert_array_equal(out["boxes"], [BOX])
    assert out["labels"].tolist() == [1] and out["is_crowd"].tolist() == [False]


def test_crop_clips_and_drops_boxes_at_the_edge():
    # a box straddling the right edge of every crop that keeps its centre gets clipped to [0, 1]
    e = element(boxes=[BOX, [0.0, 0.9, 1.0, 1.0]], labels=[1, 2], crowd=[False, True])
    for seed in seeds(20):
        out = numpy(augment.random_iou_crop(e, seed))
        assert out["boxes"].min(initial=0) >= 0 and out["boxes"].max(initial=1) <= 1
        for box, label, crowd in zip(out["boxes"], out["labels"], out["is_crowd"]):
            assert crowd == (label == 2)


def test_photometric_distort():
    image = np.random.RandomState(0).randint(0, 256, (H, W, 3)).astype(np.uint8)
    for seed in seeds(5):
        out = augment.photometric_distort(element(image=image), seed)["image"]
        assert out.dtype == tf.uint8 and out.shape == (H, W, 3)
    changed = augment.photometric_distort(element(image=image), seeds(1)[0], probability=1.0)
    assert not np.array_equal(changed["image"].numpy(), image)
    same = augment.photometric_distort(element(image=image), seeds(1)[0], probability=0.0)
    np.testing.assert_array_equal(same["image"].numpy(), image)


def test_eval_preprocess_scales_to_minus_one_one():
    out = numpy(augment.eval_preprocess(element(), 32))
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.float32
    assert out["image"].min() == -1.0 and out["image"].max() == 1.0
    np.testing.assert_array_equal(out["boxes"], [BOX])
    assert out["labels"].tolist() == [3]


def test_train_augment_chain():
    for seed in seeds(12):
        out = numpy(augment.ssd_train_augment(element(), 64, seed))
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.float32
        assert -1 <= out["image"].min() and out["image"].max() <= 1
        assert out["boxes"].min(initial=0) >= 0 and out["boxes"].max(initial=1) <= 1
        assert (out["boxes"][:, 2:] - out["boxes"][:, :2] >= augment.MIN_BOX_SIZE).all()
        for box in out["boxes"]:  # the box region is the bright rectangle
            t, l, b, r = np.round(box * 64).astype(int)
            inside = out["image"][t:b, l:r].mean()
            outside_mask = np.ones((64, 64), bool)
            outside_mask[max(t - 1, 0):b + 1, max(l - 1, 0):r + 1] = False
            outside = out["image"][outside_mask].mean() if outside_mask.any() else -1
            assert inside - outside > 0.3
    a = numpy(augment.ssd_train_augment(element(), 64, seeds(1)[0]))
    b = numpy(augment.ssd_train_augment(element(), 64, seeds(1)[0]))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])


def test_in_tf_data_with_and_without_seeds():
    data = tf.data.Dataset.from_tensors(element()).repeat(6)
    unseeded = data.map(lambda e: augment.ssd_train_augment(e, 48), num_parallel_calls=2)
    assert all(e["image"].shape == (48, 48, 3) for e in unseeded)
    seeded = tf.data.Dataset.zip(data, tf.data.Dataset.random(seed=4).batch(2)).map(
        lambda e, s: augment.ssd_train_augment(e, 48, s), num_parallel_calls=2
    )
    first = [e["boxes"].numpy() for e in seeded]
    second = [e["boxes"].numpy() for e in seeded]
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    empty = element(boxes=np.zeros((0, 4)), labels=[], crowd=[])
    out = augment.ssd_train_augment(empty, 48, seeds(1)[0])
    assert out["boxes"].shape == (0, 4)


@pytest.mark.parametrize("max_ratio", [1.0, 2.0])
def test_expand_ratio_bound(max_ratio):
    for seed in seeds(4):
        out = augment.random_expand(element(), seed, max_ratio=max_ratio, probability=1.0)
        h, w = out["image"].shape[:2]
        assert h <= max_ratio * H and w <= max_ratio * W
