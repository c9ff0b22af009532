import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from pipelines.data import coco
from pipelines.synthetic import coco as synthetic_coco

EMPTY_ID, CORRUPT_ID, GRAY_ID, KNOWN_ID = 2, 5, 99, 7
KNOWN_BBOX = [10.0, 20.0, 30.0, 40.0]  # x, y, w, h in pixels


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A 10-image synthetic COCO dataset, edited: one image emptied, one corrupted, one grayscale
    image added, a known box, a box hanging over the border, a degenerate box, a crowd box."""
    root = synthetic_coco.generate(tmp_path_factory.mktemp("coco"), num_train=10, num_val=2,
                                   image_size=96, seed=3)
    ann_file = root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != EMPTY_ID]
    corrupt = next(i for i in data["images"] if i["id"] == CORRUPT_ID)["file_name"]
    (root / "train" / corrupt).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    Image.new("L", (50, 40), 77).save(root / "train" / "gray.jpg")
    data["images"].append({"id": GRAY_ID, "file_name": "gray.jpg", "width": 50, "height": 40})
    extra = [
        (KNOWN_ID, 3, KNOWN_BBOX, 0),
        (GRAY_ID, 12, [40.0, 30.0, 20.0, 20.0], 0),  # hangs over the right and bottom edges
        (GRAY_ID, 7, [5.0, 5.0, 0.0, 10.0], 0),  # zero width: skipped and counted
        (GRAY_ID, 1, [0.0, 0.0, 25.0, 20.0], 1),  # a crowd region
    ]
    for n, (image_id, cid, bbox, crowd) in enumerate(extra):
        data["annotations"].append({"id": 900 + n, "image_id": image_id, "category_id": cid,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd,
                                    "segmentation": []})
    ann_file.write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def index(root):
    return coco.load_coco(root, "train")


@pytest.fixture(scope="module")
def elements(index):
    return {int(e["image_id"]): {k: v.numpy() for k, v in e.items()}
            for e in coco.coco_dataset(index)}


def json_of(root):
    return json.loads((root / "annotations" / "instances_train.json").read_text())


def test_label_maps(index):
    assert index.category_ids == (1, 3, 7, 10, 12)
    assert index.num_classes == 5
    assert index.label_to_category == {1: 1, 2: 3, 3: 7, 4: 10, 5: 12}
    assert index.category_to_label == {1: 1, 3: 2, 7: 3, 10: 4, 12: 5}
    assert index.label_names == ("background", "circle", "square", "triangle", "cross", "ring")


def test_element_contract(index):
    spec = coco.coco_dataset(index).element_spec
    assert spec == {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "labels": tf.TensorSpec([None], tf.int32),
        "is_crowd": tf.TensorSpec([None], tf.bool),
        "image_id": tf.TensorSpec([], tf.int64),
    }


def test_boxes_and_labels_match_the_json(root, index, elements):
    data = json_of(root)
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    h, w = sizes[KNOWN_ID]
    x, y, bw, bh = KNOWN_BBOX
    known = elements[KNOWN_ID]
    row = int(np.flatnonzero(known["labels"] == 2)[-1])  # category 3 -> label 2, added last
    np.testing.assert_allclose(known["boxes"][row], [y / h, x / w, (y + bh) / h, (x + bw) / w],
                               rtol=0, atol=1e-7)
    for image_id, e in elements.items():
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and a["bbox"][2] > 0]
        assert e["image"].shape[:2] == sizes[image_id]
        assert [index.label_to_category[int(l)] for l in e["labels"]] == [
            a["category_id"] for a in anns
        ]
        assert e["is_crowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        assert e["boxes"].min(initial=0) >= 0 and e["boxes"].max(initial=1) <= 1
        if len(e["boxes"]):
            assert (e["boxes"][:, 2:] > e["boxes"][:, :2]).all()


def test_clipping_crowd_and_grayscale(elements, index):
    gray = elements[GRAY_ID]
    assert gray["image"].shape == (40, 50, 3)
    assert (gray["image"][..., 0] == gray["image"][..., 1]).all()
    np.testing.assert_allclose(gray["boxes"], [[30 / 40, 40 / 50, 1.0, 1.0], [0, 0, 0.5, 0.5]])
    assert gray["labels"].tolist() == [5, 1]  # ring (12) and circle (1)
    assert gray["is_crowd"].tolist() == [False, True]
    assert index.skipped_boxes == 1


def test_image_without_annotations_is_kept(elements):
    empty = elements[EMPTY_ID]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["is_crowd"].shape == (0,) and empty["image"].shape[2] == 3


def test_corrupt_image_is_skipped_and_counted(root):
    index = coco.load_coco(root, "train")
    ds = coco.coco_dataset(index)
    ids = [int(e["image_id"]) for e in ds]
    assert len(ids) == index.num_images - 1 == 10
    assert CORRUPT_ID not in ids
    assert index.skipped_images.skipped == 1
    assert index.skipped_images.files == [str(index.image_dir / f"{CORRUPT_ID:012d}.jpg")]
    assert "1 undecodable images" in index.report()
    list(ds)  # a second pass: still one file, two events
    assert index.skipped_images.skipped == 1 and index.skipped_images.events == 2
    assert ds.coco_index is index


def test_shuffle_is_seeded(index):
    order = lambda **kw: [int(e["image_id"]) for e in coco.coco_dataset(index, **kw)]  # noqa: E731
    plain = order()
    a, b = order(shuffle=True, seed=1), order(shuffle=True, seed=1)
    assert a == b and sorted(a) == sorted(plain) and a != plain
    assert sorted(order(deterministic=False, num_parallel_calls=2)) == sorted(plain)


def test_real_coco_names(root, tmp_path):
    shutil.copytree(root / "val", tmp_path / "val2017")
    (tmp_path / "annotations").mkdir()
    shutil.copy(root / "annotations" / "instances_val.json",
                tmp_path / "annotations" / "instances_val2017.json")
    by_split = coco.load_coco(tmp_path, "val")
    by_file = coco.load_coco(tmp_path / "annotations" / "instances_val2017.json")
    assert by_split.image_dir == by_file.image_dir == tmp_path / "val2017"
    assert by_split.num_images == by_file.num_images == 2
    other = coco.load_coco(tmp_path / "annotations" / "instances_val2017.json",
                           image_dir=root / "val")
    assert other.image_dir == root / "val"


def test_clear_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_test.json"):
        coco.load_coco(root, "test")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        coco.load_coco(tmp_path / "nothing.json")

    (tmp_path / "annotations").mkdir()
    bad = tmp_path / "annotations" / "instances_train.json"
    shutil.copy(root / "annotations" / "instances_train.json", bad)
    with pytest.raises(FileNotFoundError, match="image folder.*instances_train.json"):
        coco.load_coco(tmp_path, "train")

    def broken(edit):
        data = json_of(root)
        edit(data)
        bad.write_text(json.dumps(data))
        return lambda: coco.load_coco(bad, image_dir=root / "train")

    def bad_category(d):
        d["annotations"][0]["category_id"] = 2

    def bad_image(d):
        d["annotations"][0]["image_id"] = 12345

    def bad_bbox(d):
        d["annotations"][0]["bbox"] = [1, 2, 3]

    def no_categories(d):
        del d["categories"]

    for edit, message in [
        (bad_category, "unknown category id 2"),
        (bad_image, "unknown image id 12345"),
        (bad_bbox, r"malformed bbox \[1, 2, 3\]"),
        (no_categories, "'categories'"),
    ]:
        with pytest.raises(coco.CocoFormatError, match=rf"instances_train\.json.*{message}"):
            broken(edit)()
    bad.write_text("{not json")
    with pytest.raises(coco.CocoFormatError, match="instances_train.json: not valid JSON"):
        coco.load_coco(bad, image_dir=root / "train")


def test_tfds_mock_gives_the_same_contract():
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = coco.tfds_coco_dataset("validation")
        elements = list(ds)
    assert ds.element_spec == {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "labels": tf.TensorSpec([None], tf.int32),
        "is_crowd": tf.TensorSpec([None], tf.bool),
        "image_id": tf.TensorSpec([], tf.int64),
    }
    assert len(elements) == 4
    for e in elements:
        boxes, labels = e["boxes"].numpy(), e["labels"].numpy()
        assert len(boxes) == len(labels) == len(e["is_crowd"])
        assert ((labels >= 1) & (labels <= 80)).all()
        if len(boxes):
            assert boxes.min() >= 0 and boxes.max() <= 1
            assert (boxes[:, 2:] > boxes[:, :2]).all()
    to_category = coco.tfds_label_to_category()
    assert len(to_category) == 80 and to_category[1] == 1 and to_category[80] == 90
    assert to_category[12] == 13  # COCO has no category 12
