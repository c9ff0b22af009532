import contextlib
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from pipelines.synthetic import coco as synthetic_coco

PARAMS = dict(num_train=60, num_val=12, image_size=96, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic_coco.generate(tmp_path_factory.mktemp("shapes"), **PARAMS)


def load(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_layout_and_counts(root):
    assert (root / "annotations" / "instances_train.json").is_file()
    assert (root / "annotations" / "instances_val.json").is_file()
    assert len(list((root / "train").glob("*.jpg"))) == 60
    assert len(list((root / "val").glob("*.jpg"))) == 12
    train, val = load(root / "annotations/instances_train.json"), load(
        root / "annotations/instances_val.json"
    )
    assert len(train.getImgIds()) == 60 and len(val.getImgIds()) == 12
    assert not set(train.getImgIds()) & set(val.getImgIds())  # ids unique across splits
    assert not set(train.getAnnIds()) & set(val.getAnnIds())


def test_categories_are_not_contiguous(root):
    coco = load(root / "annotations/instances_train.json")
    assert coco.getCatIds() == [1, 3, 7, 10, 12]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "circle", "square", "triangle", "cross", "ring"
    ]
    used = {a["category_id"] for a in coco.anns.values()}
    assert used == {1, 3, 7, 10, 12}


def test_images_and_annotations_are_valid_coco(root):
    coco = load(root / "annotations/instances_train.json")
    per_image = []
    for image_id, info in coco.imgs.items():
        with Image.open(root / "train" / info["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (info["width"], info["height"])
        assert max(info["width"], info["height"]) == 96
        assert 72 <= min(info["width"], info["height"]) <= 96
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        per_image.append(sum(not a["iscrowd"] for a in anns))
        for a in anns:
            assert set(a) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd",
                              "segmentation"}
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= info["width"] and y + h <= info["height"]
            # the box is the tight box of the mask, and the area its pixel count
            mask = coco.annToMask(a)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert abs(cols[0] - x) <= 1 and abs(rows[0] - y) <= 1
            assert abs(cols[-1] + 1 - (x + w)) <= 1 and abs(rows[-1] + 1 - (y + h)) <= 1
            if a["iscrowd"]:
                assert isinstance(a["segmentation"]["counts"], list)  # uncompressed RLE
                assert mask.sum() == a["area"]
            else:
                assert isinstance(a["segmentation"], list)  # polygons
                # a polygon has no hole: the ring's area is its pixels, its polygon the disc
                # (the two rasterizations differ by up to about a pixel along the outline)
                if coco.cats[a["category_id"]]["name"] != "ring":
                    assert abs(a["area"] - mask.sum()) <= 1.5 * (w + h)
                side = max(w, h) / (1.0 if coco.cats[a["category_id"]]["name"] != "bar" else 2)
                assert 0.04 * 72 <= side <= 0.8 * 96
    per_image = np.array(per_image)
    assert (per_image == 0).sum() >= 1  # some images with no objects
    assert per_image.max() <= synthetic_coco.MAX_OBJECTS and per_image.max() >= 4
    crowd = [a for a in coco.anns.values() if a["iscrowd"]]
    assert 1 <= len(crowd) <= 0.2 * len(coco.imgs)
    sides = np.array([max(a["bbox"][2:]) for a in coco.anns.values() if not a["iscrowd"]])
    assert sides.min() < 0.15 * 96 and sides.max() > 0.4 * 72  # small and large objects


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_coco.generate(tmp_path, num_classes=9)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_coco.generate(tmp_path, image_size=16)
    with pytest.raises(ValueError, match=r"min_scale must be in \(0, 0\.6\], got 0\.7"):
        synthetic_coco.generate(tmp_path, min_scale=0.7)
    with pytest.raises(ValueError, match="max_objects must be an int >= 0, got -1"):
        synthetic_coco.generate(tmp_path, max_objects=-1)
    with pytest.raises(ValueError, match=r"crowd_fraction must be in \[0, 1\], got 1\.5"):
        synthetic_coco.generate(tmp_path, crowd_fraction=1.5)


def test_few_large_objects(tmp_path):
    """The easier set of the detection metric floor: few, large objects, no crowds; the default
    set's manifest stays as it was (the new parameters are recorded only when changed)."""
    import json

    root = synthetic_coco.generate(tmp_path / "big", num_train=24, num_val=1, image_size=96,
                                   min_scale=0.3, max_objects=2, crowd_fraction=0.0)
    coco = load(root / "annotations/instances_train.json")
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert max(per_image) == 2 and not any(a["iscrowd"] for a in coco.anns.values())
    # object side >= 0.3 x the shorter side (>= 72 px) x the aspect jitter (exp(-0.22))
    assert min(max(a["bbox"][2:]) for a in coco.anns.values()) >= 0.3 * 72 * 0.8
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["min_scale"] == 0.3 and manifest["max_objects"] == 2
    default = synthetic_coco.generate(tmp_path / "default", num_train=1, num_val=1, image_size=48)
    assert "min_scale" not in json.loads((default / "manifest.json").read_text())


def test_more_classes(tmp_path):
    root = synthetic_coco.generate(tmp_path, num_train=4, num_val=1, image_size=64,
                                   num_classes=8)
    coco = load(root / "annotations/instances_train.json")
    assert coco.getCatIds() == [1, 3, 7, 10, 12, 15, 18, 21]
