"""The synthetic ImageNet-layout dataset: layout, determinism, idempotence, content."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.data import imagenet as imagenet_data
from pipelines.synthetic import imagenet as synthetic_imagenet

PARAMS = dict(num_train_per_class=3, num_val_per_class=2, num_classes=10, image_size=64, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic_imagenet.generate(tmp_path_factory.mktemp("shapes"), **PARAMS)


def test_layout_is_imagenet(root):
    wnids = sorted(p.name for p in (root / "train").iterdir())
    assert wnids == [f"n900000{i:02d}" for i in range(1, 11)]
    for wnid in wnids:
        files = sorted(p.name for p in (root / "train" / wnid).iterdir())
        assert files == [f"{wnid}_{i}.JPEG" for i in range(3)]
    val = sorted(p.name for p in (root / "val").iterdir())
    assert val == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 21)]
    with open(root / "LOC_val_solution.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"] and len(rows) == 21
    mapping = (root / "LOC_synset_mapping.txt").read_text().split("\n")
    assert mapping[0] == "n90000001 circle" and mapping[9] == "n90000010 stripes"
    assert json.loads((root / "manifest.json").read_text())["num_classes"] == 10


def test_readable_as_imagenet_and_balanced(root):
    train = imagenet_data.folder_source(root, "train")
    val = imagenet_data.folder_source(root, "val", class_names=train.class_names)
    assert train.num_examples == 30 and val.num_examples == 20
    labels = [int(e["label"]) for e in val.dataset().as_numpy_iterator()]
    assert np.bincount(labels).tolist() == [2] * 10


def test_val_boxes_hold_the_object(root):
    """The CSV box (x0 y0 x1 y1) lies in the image and holds the object: pixels of the class's
    colour family (jitter and noise stay within 90 of the family colour)."""
    with open(root / "LOC_val_solution.csv") as f:
        rows = list(csv.reader(f))[1:]
    names = {wnid: i for i, (wnid, _) in enumerate(synthetic_imagenet.class_names(10))}
    for image_id, prediction in rows:
        wnid, *box = prediction.split()
        x0, y0, x1, y1 = map(int, box)
        pixels = np.asarray(Image.open(root / "val" / f"{image_id}.JPEG"), dtype=float)
        h, w = pixels.shape[:2]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert max(h, w) == 64 and min(h, w) >= 0.8 * 64 - 1
        family = synthetic_imagenet.FAMILIES[synthetic_imagenet.CLASSES[names[wnid]][2]]
        close = np.linalg.norm(pixels[y0:y1, x0:x1] - family, axis=-1) < 90
        assert close.mean() > 0.15  # textures are half their colour, blobs may cover some


def test_classes_differ_in_shape_not_only_colour():
    """Two classes share each colour family: the same family at the same place and size, the
    pixels must differ (shape or texture)."""
    classes = synthetic_imagenet.CLASSES
    for family in range(len(synthetic_imagenet.FAMILIES)):
        members = [i for i, c in enumerate(classes) if c[2] == family]
        assert len(members) == 2
        a, b = (synthetic_imagenet.render(np.random.default_rng(0), i, 96)[0] for i in members)
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes"):
        synthetic_imagenet.generate("/nonexistent", num_classes=13)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_imagenet.generate("/nonexistent", image_size=16)
