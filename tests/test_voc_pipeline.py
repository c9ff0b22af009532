"""pipelines.data.voc on a small VOCdevkit written here (palette PNGs) plus an SBD fixture (.mat files
in the real GTcls struct layout, written with scipy.io.savemat)."""

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import tensorflow as tf
from PIL import Image

from pipelines.data import voc

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000010", "2007_000011"]
SBD_TRAIN = ["2007_000002", "2008_000100", "2007_000010"]  # one VOC train, one VOC val id
SBD_VAL = ["2008_000200", "2007_000011"]


def make_mask(image_id, height=40, width=52):
    """A deterministic mask: background, a block of class 1 + (id % 20), a 255 outline."""
    seed = int(image_id.replace("_", ""))
    mask = np.zeros((height, width), dtype=np.uint8)
    y, x = 5 + seed % 7, 6 + seed % 9
    mask[y:y + 20, x:x + 24] = 1 + seed % 20
    mask[y - 1, x - 1:x + 25] = 255
    return mask


def make_image(mask):
    rng = np.random.default_rng(int(mask.sum()) % 1000)
    image = rng.integers(0, 60, size=mask.shape + (3,), dtype=np.uint8)
    image[mask > 0] += 150
    return image


def save_palette_png(path, mask):
    png = Image.fromarray(mask)
    png.putpalette(voc.voc_palette().tobytes())
    png.save(path)


def save_sbd_mat(path, mask):
    """GTcls as SBD stores it: a 1x1 struct with Boundaries (cell of sparse), Segmentation,
    CategoriesPresent."""
    gt = np.zeros((1, 1), dtype=[("Boundaries", "O"), ("Segmentation", "O"),
                                 ("CategoriesPresent", "O")])
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix((mask == k + 1).astype(np.uint8))
    gt[0, 0]["Boundaries"] = boundaries
    gt[0, 0]["Segmentation"] = mask
    gt[0, 0]["CategoriesPresent"] = np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)
    scipy.io.savemat(str(path), {"GTcls": gt})


def write_voc(root, train=VOC_TRAIN, val=VOC_VAL, sizes=None):
    voc_root = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_root / folder).mkdir(parents=True, exist_ok=True)
    for image_id in list(train) + list(val):
        mask = make_mask(image_id, *(sizes or {}).get(image_id, (40, 52)))
        Image.fromarray(make_image(mask)).save(voc_root / "JPEGImages" / f"{image_id}.jpg",
                                               quality=95)
        save_palette_png(voc_root / "SegmentationClass" / f"{image_id}.png", mask)
    lists = voc_root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in list(train) + list(val)))
    return root / "VOCdevkit"


def write_sbd(root, voc_root):
    dataset = root / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    (dataset / "img").mkdir()
    for image_id in SBD_TRAIN + SBD_VAL:
        mask = make_mask(image_id)
        mask[mask == 255] = 0  # SBD has no void band
        save_sbd_mat(dataset / "cls" / f"{image_id}.mat", mask)
        image = Image.fromarray(make_image(mask))
        image.save(dataset / "img" / f"{image_id}.jpg", quality=95)
        if image_id == "2008_000100":  # VOC2012 JPEGImages holds the SBD images too, mostly
            image.save(voc_root / "JPEGImages" / f"{image_id}.jpg", quality=95)
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    return root / "benchmark_RELEASE"


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    devkit = write_voc(root)
    sbd = write_sbd(root, devkit / "VOC2012")
    return devkit, sbd


def elements(ds):
    return list(ds.as_numpy_iterator())


def test_palette_is_the_voc_colour_map():
    palette = voc.voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[2].tolist() == [0, 128, 0]  # bicycle
    assert palette[4].tolist() == [0, 0, 128]  # boat
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void
    assert len({tuple(c) for c in palette}) == 256
    assert len(voc.VOC_CLASSES) == 21 and voc.VOC_CLASSES[15] == "person"


def test_palette_png_reads_as_indices_not_rgb(tmp_path):
    mask = make_mask("2007_000001")
    save_palette_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(voc.read_mask(tmp_path / "m.png"), mask)
    # what the pipeline must avoid: TensorFlow expands the palette to colours
    rgb = tf.io.decode_png(tf.io.read_file(str(tmp_path / "m.png"))).numpy()
    assert rgb.shape == mask.shape + (3,)
    assert rgb[mask == 255][0].tolist() == [224, 224, 192]


def test_sbd_mat_reads_segmentation(tmp_path):
    mask = make_mask("2008_000100")
    save_sbd_mat(tmp_path / "x.mat", mask)
    out = voc.read_mask(tmp_path / "x.mat")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)
    scipy.io.savemat(str(tmp_path / "bad.mat"), {"GTinst": np.zeros((2, 2))})
    with pytest.raises(voc.VocFormatError, match="bad.mat.*GTcls"):
        voc.read_mask(tmp_path / "bad.mat")


def test_splits_and_roots(devkit):
    root, _ = devkit
    for where in (root, root / "VOC2012", root.parent):  # devkit, VOC2012 itself, its parent
        index = voc.load_voc(where, "train")
        assert index.ids == VOC_TRAIN
    assert voc.load_voc(root, "val").ids == VOC_VAL
    assert voc.load_voc(root, "trainval").num_images == 5
    index = voc.load_voc(root, "train")
    assert index.num_classes == 21 and index.num_sbd_masks == 0
    assert all(p.endswith(".png") and "SegmentationClass" in p for p in index.mask_paths)
    with pytest.raises(FileNotFoundError, match="test.txt"):
        voc.load_voc(root, "test")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        voc.load_voc(root / "nowhere", "train")
    with pytest.raises(ValueError, match="sbd_dir"):
        voc.load_voc(root, "train_aug")


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(devkit):
    root, sbd = devkit
    index = voc.load_voc(root, "train_aug", sbd_dir=sbd)
    expected = sorted((set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL))
    assert index.ids == expected
    assert index.ids == ["2007_000001", "2007_000002", "2007_000003", "2008_000100",
                         "2008_000200"]
    assert not set(index.ids) & set(voc.load_voc(root, "val").ids)
    masks = dict(zip(index.ids, index.mask_paths))
    images = dict(zip(index.ids, index.image_paths))
    assert masks["2007_000002"].endswith("SegmentationClass/2007_000002.png")  # VOC mask wins
    assert masks["2008_000100"].endswith("cls/2008_000100.mat")
    assert images["2008_000100"].endswith("JPEGImages/2008_000100.jpg")
    assert images["2008_000200"].endswith("img/2008_000200.jpg")  # not in JPEGImages
    assert index.num_sbd_masks == 2
    # the dataset reads the .mat masks too
    got = {e["image_id"].decode(): e for e in elements(voc.voc_dataset(index))}
    expected_mask = make_mask("2008_000200")
    expected_mask[expected_mask == 255] = 0
    np.testing.assert_array_equal(got["2008_000200"]["label"][..., 0], expected_mask)


def test_check_disjoint(devkit):
    root, _ = devkit
    train, val = voc.load_voc(root, "trainval"), voc.load_voc(root, "val")
    with pytest.raises(ValueError, match="share 2 images"):
        voc.check_disjoint(train, val)
    voc.check_disjoint(voc.load_voc(root, "train"), val)


def test_elements_match_files(devkit):
    root, _ = devkit
    index = voc.load_voc(root, "train")
    got = elements(voc.voc_dataset(index))
    assert [e["image_id"].decode() for e in got] == VOC_TRAIN
    for element, image_id in zip(got, VOC_TRAIN):
        mask = make_mask(image_id)
        assert element["image"].dtype == np.uint8 and element["image"].shape == (40, 52, 3)
        assert element["label"].dtype == np.uint8 and element["label"].shape == (40, 52, 1)
        np.testing.assert_array_equal(element["label"][..., 0], mask)
        # JPEG is lossy, but the bright object is where the mask says
        bright = element["image"].mean(-1) > 120
        assert (bright == (mask > 0)).mean() > 0.97


def test_list_file_errors(tmp_path):
    root = write_voc(tmp_path, train=["2007_000001"], val=["2007_000010"])
    lists = root / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "dup.txt").write_text("2007_000001\n2007_000001\n")
    with pytest.raises(voc.VocFormatError, match="dup.txt.*listed twice"):
        voc.load_voc(root, "dup")
    (lists / "empty.txt").write_text("\n")
    with pytest.raises(voc.VocFormatError, match="empty.txt.*empty"):
        voc.load_voc(root, "empty")


@pytest.fixture
def bad_devkit(tmp_path):
    """Five train images: two good, one mask of the wrong size, one with label 40, one without
    a mask, one with an RGB mask."""
    ids = ["2007_000001", "2007_000002", "2007_000003", "2007_000004", "2007_000005",
           "2007_000006"]
    root = write_voc(tmp_path, train=ids, val=["2007_000010"])
    masks = root / "VOC2012" / "SegmentationClass"
    save_palette_png(masks / "2007_000002.png", make_mask("2007_000002", 40, 50))  # size
    wrong = make_mask("2007_000003")
    wrong[0, 0] = 40
    save_palette_png(masks / "2007_000003.png", wrong)  # out of range
    (masks / "2007_000004.png").unlink()  # missing
    Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(masks / "2007_000006.png")  # RGB
    return root


def first_error(index):
    with pytest.raises(tf.errors.OpError) as info:
        elements(voc.voc_dataset(index))
    return str(info.value)


def test_bad_examples_raise_naming_the_file(bad_devkit):
    root = bad_devkit
    lists = root / "VOC2012" / "ImageSets" / "Segmentation"
    with pytest.raises(FileNotFoundError, match=r"2007_000004\.png.*not found"):
        voc.load_voc(root, "train")

    def only(image_id):
        (lists / f"{image_id}.txt").write_text(image_id + "\n")
        return voc.load_voc(root, image_id)

    message = first_error(only("2007_000002"))
    assert "2007_000002.png" in message and "40x50 but its image is 40x52" in message
    message = first_error(only("2007_000003"))
    assert "2007_000003.png" in message and "labels [40] outside the class range 0..20" in message
    message = first_error(only("2007_000006"))
    assert "2007_000006.png" in message and "mode 'RGB'" in message
    # with fewer classes, a good VOC label (2 here) is out of range too
    only("2007_000001")
    index = voc.load_voc(root, "2007_000001", class_names=voc.VOC_CLASSES[:2])
    assert "labels [2] outside the class range 0..1" in first_error(index)


def test_skip_bad_skips_and_counts(bad_devkit):
    index = voc.load_voc(bad_devkit, "train", skip_bad=True)
    assert index.skipped.skipped == 1  # the missing mask, at indexing time
    assert index.num_images == 5
    got = elements(voc.voc_dataset(index))
    assert [e["image_id"].decode() for e in got] == ["2007_000001", "2007_000005"]
    assert index.skipped.skipped == 4
    reasons = index.skipped.reasons
    assert sorted(p.rsplit("/", 1)[-1] for p in reasons) == [
        "2007_000002.png", "2007_000003.png", "2007_000004.png", "2007_000006.png"]
    assert any("outside the class range" in r for r in reasons.values())
    assert any("but its image is" in r for r in reasons.values())
    elements(voc.voc_dataset(index))  # a second pass counts no file twice
    assert index.skipped.skipped == 4


def test_undecodable_image_names_the_file(tmp_path):
    root = write_voc(tmp_path, train=["2007_000001", "2007_000002"], val=["2007_000010"])
    (root / "VOC2012" / "JPEGImages" / "2007_000002.jpg").write_bytes(b"not a jpeg")
    assert "2007_000002.jpg: cannot decode image" in first_error(voc.load_voc(root, "train"))
    index = voc.load_voc(root, "train", skip_bad=True)
    assert [e["image_id"] for e in elements(voc.voc_dataset(index))] == [b"2007_000001"]
    assert index.skipped.files[0].endswith("2007_000002.jpg")
