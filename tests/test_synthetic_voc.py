import json

import numpy as np
import pytest
from PIL import Image

from pipelines.synthetic import voc as synthetic_voc
from pipelines.data import voc

PARAMS = dict(num_train=16, num_val=6, image_size=64, num_classes=5, seed=0, border=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic_voc.generate(tmp_path_factory.mktemp("shapes_voc"), **PARAMS)


def test_layout_and_lists(root):
    voc_root = root / "VOC2012"
    lists = voc_root / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()
    val = (lists / "val.txt").read_text().split()
    assert len(train) == 16 and len(val) == 6 and not set(train) & set(val)
    assert (lists / "trainval.txt").read_text().split() == train + val
    assert train[0] == "2024_000001" and val[0] == "2025_000001"
    assert len(list((voc_root / "JPEGImages").glob("*.jpg"))) == 22
    assert len(list((voc_root / "SegmentationClass").glob("*.png"))) == 22
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["class_names"] == ["background", "circle", "square", "triangle", "cross",
                                       "ring"]


def test_masks_are_voc_palette_pngs_with_ignore_bands(root):
    voc_root = root / "VOC2012"
    palette = voc.voc_palette()
    seen = set()
    for mask_path in sorted((voc_root / "SegmentationClass").glob("*.png")):
        with Image.open(mask_path) as mask, \
                Image.open(voc_root / "JPEGImages" / (mask_path.stem + ".jpg")) as image:
            assert mask.mode == "P" and image.mode == "RGB" and image.format == "JPEG"
            assert mask.size == image.size and max(image.size) == 64
            assert 48 <= min(image.size) <= 64
            got = np.asarray(mask.getpalette(), dtype=np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(got[:256], palette)
            labels = np.asarray(mask)
        values = set(np.unique(labels).tolist())
        assert values <= set(range(6)) | {255}
        assert 255 in values and 0 in values and len(values - {0, 255}) >= 1
        seen |= values
        # every object pixel next to the background has the ignore band in between
        objects = (labels != 0) & (labels != 255)
        background = labels == 0
        touching = (objects[:, 1:] & background[:, :-1]) | (objects[:, :-1] & background[:, 1:])
        assert not touching.any()
    assert seen == set(range(6)) | {255}


def test_void_band_width():
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 3
    out = synthetic_voc.void_band(labels, 1)
    assert (out == 255).sum() == (12 * 12 - 10 * 10) + (10 * 10 - 8 * 8)  # 1 px each side
    assert (out == 3).sum() == 8 * 8
    assert (synthetic_voc.void_band(labels, 2) == 255).sum() == (14 * 14 - 6 * 6)
    np.testing.assert_array_equal(synthetic_voc.void_band(labels, 0), labels)


def test_readable_by_the_voc_pipeline(root):
    index = voc.load_voc(root, "val", class_names=synthetic_voc.class_names())
    assert index.num_images == 6 and index.num_classes == 6
    elements = list(voc.voc_dataset(index).as_numpy_iterator())
    assert len(elements) == 6 and index.skipped.skipped == 0
    # the shapes are where the mask says: their colours differ from the grey background
    e = elements[0]
    object_pixels = (e["label"][..., 0] > 0) & (e["label"][..., 0] < 255)
    saturation = e["image"].max(-1).astype(int) - e["image"].min(-1)
    assert saturation[object_pixels].mean() > saturation[e["label"][..., 0] == 0].mean() + 40


def test_other_parameters_regenerate(tmp_path):
    """Regenerated with fewer classes, the masks and class names follow (the manifest logic
    itself is tested for all formats in test_manifest.py)."""
    params = dict(PARAMS, num_train=4, num_val=2)
    out = synthetic_voc.generate(tmp_path / "d", **params)
    synthetic_voc.generate(out, **dict(params, num_train=3, num_classes=2))
    labels = set()
    for path in (out / "VOC2012" / "SegmentationClass").glob("*.png"):
        labels |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert labels <= {0, 1, 2, 255}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_train"] == 3 and manifest["class_names"][-1] == "square"


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_voc.generate("/nonexistent", num_classes=9)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_voc.generate("/nonexistent", image_size=16)
