"""ImageNet input: the three sources, the element contract, the Inception crops, odd files,
determinism, cache and the tf.data service."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.data import imagenet as data

WNIDS = ("n01440764", "n01443537", "n01484850")
COLOURS = ((220, 30, 30), (30, 200, 40), (40, 60, 230))


def jpeg_bytes(pixels, mode="RGB", fmt="JPEG", **kwargs):
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, fmt, **kwargs)
    return buf.getvalue()


def flat(colour, height=48, width=64):
    return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 3)).copy()


def noise(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


ODD = {  # name -> (bytes maker, decodable)
    "cmyk.JPEG": (lambda c: jpeg_bytes(flat(c), mode="CMYK"), True),
    "gray.JPEG": (lambda c: jpeg_bytes(flat(c), mode="L"), True),
    "png.JPEG": (lambda c: jpeg_bytes(flat(c), fmt="PNG"), True),
    "truncated.JPEG": (lambda c: jpeg_bytes(noise(64, 80))[:700], False),
    "garbage.JPEG": (lambda c: b"this is not an image" * 4, False),
}


def make_imagenet_folder(root, per_class=4, val_layout="csv", odd=True):
    """train/<wnid>/ with flat-coloured JPEGs (the class's colour) plus, in the first class, one
    file of each odd kind; val/ flat with a labels file (``val_layout``) or in class folders."""
    for wnid, colour in zip(WNIDS, COLOURS):
        for i in range(per_class):
            write(f"{root}/train/{wnid}/{wnid}_{i}.JPEG", jpeg_bytes(flat(colour)))
    if odd:
        for name, (maker, _) in ODD.items():
            write(f"{root}/train/{WNIDS[0]}/{name}", maker(COLOURS[0]))
    rows = []
    for i in range(6):
        label = i % 3
        name = f"ILSVRC2012_val_{i + 1:08d}"
        if val_layout == "folders":
            write(f"{root}/val/{WNIDS[label]}/{name}.JPEG", jpeg_bytes(flat(COLOURS[label])))
        else:
            write(f"{root}/val/{name}.JPEG", jpeg_bytes(flat(COLOURS[label])))
        rows.append((name, label))
    if val_layout == "csv":
        lines = ["ImageId,PredictionString"] + [f"{n},{WNIDS[l]} 1 2 30 40" for n, l in rows]
        (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    elif val_layout == "per_line":
        (root / "validation_labels.txt").write_text("".join(f"{WNIDS[l]}\n" for _, l in rows))
    elif val_layout == "pairs":
        (root / "val_labels.txt").write_text("".join(f"{n}.JPEG {l}\n" for n, l in rows))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"))


def elements(source, **kwargs):
    return list(source.dataset(**kwargs).as_numpy_iterator())


# ----------------------------------------------------------------------------- folder layout


def test_folder_source_contract(folder):
    source = data.folder_source(folder, "train")
    assert source.class_names == WNIDS
    assert source.num_examples == 3 * 4 + len(ODD)
    items = elements(source)
    assert len(items) == source.num_examples
    first = items[0]
    assert set(first) == {"encoded", "label", "name"}
    assert isinstance(first["encoded"], bytes) and first["label"].dtype == np.int32
    by_class = {}
    for item in items:
        wnid = os.path.basename(os.path.dirname(item["name"].decode()))
        by_class.setdefault(wnid, set()).add(int(item["label"]))
    assert by_class == {WNIDS[0]: {0}, WNIDS[1]: {1}, WNIDS[2]: {2}}
    # bytes are the file's, undecoded
    path = items[0]["name"].decode()
    assert items[0]["encoded"] == open(path, "rb").read()


@pytest.mark.parametrize("layout", ["csv", "per_line", "pairs", "folders"])
def test_val_layouts_give_the_same_labels(tmp_path, layout):
    root = make_imagenet_folder(tmp_path, per_class=1, val_layout=layout, odd=False)
    train = data.folder_source(root, "train")
    val = data.folder_source(root, "val", class_names=train.class_names)
    labels = {os.path.splitext(os.path.basename(e["name"].decode()))[0]: int(e["label"])
              for e in elements(val)}
    assert labels == {f"ILSVRC2012_val_{i + 1:08d}": i % 3 for i in range(6)}


def test_val_labels_errors(tmp_path):
    root = make_imagenet_folder(tmp_path, per_class=1, val_layout="none", odd=False)
    with pytest.raises(data.DatasetError, match="no class folders and no labels file"):
        data.folder_source(root, "val")
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG n99999999\n")
    with pytest.raises(data.DatasetError, match=r"bad.txt:1: 'n99999999' is neither"):
        data.folder_source(root, "val", labels_file=bad)
    partial = tmp_path / "partial.txt"
    partial.write_text("ILSVRC2012_val_00000001.JPEG n01440764\n")
    with pytest.raises(data.DatasetError, match="no label for 5 images"):
        data.folder_source(root, "val", labels_file=partial)
    devkit = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    devkit.write_text("490\n361\n171\n822\n297\n482\n")
    with pytest.raises(data.DatasetError, match="devkit"):
        data.folder_source(root, "val", labels_file=devkit)
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        data.folder_source(root, "test")
    (tmp_path / "train" / "n_stray").mkdir()
    (tmp_path / "val2" / "n_stray").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match="class folder not among"):
        data.folder_source(root, "val2", class_names=WNIDS)


# ----------------------------------------------------------------------------- TFRecord, TFDS


def write_slim_shards(folder, num_shards=2, per_shard=3, label_offset=1):
    """TF-slim / Inception format shards; image i has class i % 3, stored as label + offset."""
    paths, i = [], 0
    for shard in range(num_shards):
        path = os.path.join(folder, f"train-{shard:05d}-of-{num_shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(per_shard):
                label = i % 3
                feature = {
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[jpeg_bytes(flat(COLOURS[label]))])),
                    "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[label + label_offset])),
                    "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[f"img{i}.JPEG".encode()])),
                    "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[b"JPEG"])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString())
                i += 1
        paths.append(path)
    return paths


def test_tfrecord_source(tmp_path):
    write_slim_shards(tmp_path)
    source = data.tfrecord_source(str(tmp_path / "train-*"), num_classes=3)
    assert source.num_examples == 6 and source.class_names == ("0", "1", "2")
    items = elements(source)
    labels = {e["name"].decode(): int(e["label"]) for e in items}
    assert labels == {f"img{i}.JPEG": i % 3 for i in range(6)}
    image = tf.io.decode_jpeg(items[0]["encoded"]).numpy()
    assert image.shape == (48, 64, 3)
    # a wrong offset is an error naming the problem, not silently shifted labels
    shifted = data.tfrecord_source(str(tmp_path / "train-*"), num_classes=3, label_offset=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset"):
        elements(shifted)
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        data.tfrecord_source(str(tmp_path / "validation-*"), num_classes=3)


def test_tfrecord_shards_split_between_input_pipelines(tmp_path):
    write_slim_shards(tmp_path, num_shards=4, per_shard=2)
    source = data.tfrecord_source(str(tmp_path / "train-*"), num_classes=3)
    names = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i)
        names.append({e["name"] for e in elements(source, input_context=ctx)})
    assert len(names[0]) == len(names[1]) == 4 and not names[0] & names[1]


def write_ilsvrc_tars(manual_dir):
    """ILSVRC2012_img_train.tar (a tar of per-class tars) and ILSVRC2012_img_val.tar, tiny."""
    os.makedirs(manual_dir, exist_ok=True)

    def add(tar, name, content):
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))

    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
        for wnid, colour in zip(WNIDS[:2], COLOURS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(2):
                    add(tar, f"{wnid}_{i}.JPEG", jpeg_bytes(flat(colour)))
            add(outer, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i in range(3):
            add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg_bytes(flat(COLOURS[i])))


def test_tfds_source_built_from_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        data.tfds_source("train", data_dir=str(tmp_path / "tfds"))
    write_ilsvrc_tars(tmp_path / "manual")
    train = data.tfds_source("train", data_dir=str(tmp_path / "tfds"),
                             manual_dir=tmp_path / "manual")
    assert train.num_examples == 4 and train.num_classes == 1000
    assert train.class_names == data.tfds_class_names()
    labels = {e["name"].decode(): int(e["label"]) for e in elements(train)}
    assert labels == {"n01440764_0.JPEG": 0, "n01440764_1.JPEG": 0,
                      "n01443537_0.JPEG": 1, "n01443537_1.JPEG": 1}
    val = data.tfds_source("val", data_dir=str(tmp_path / "tfds"))  # prepared: no manual_dir
    items = elements(val)
    # TFDS's validation_labels.txt, lines 1-3: n01751748, n09193705, n02105855
    wnids = [val.class_names[int(e["label"])] for e in sorted(items, key=lambda e: e["name"])]
    assert wnids == ["n01751748", "n09193705", "n02105855"]
    image = tf.io.decode_jpeg(items[0]["encoded"]).numpy()  # still encoded bytes
    assert image.shape == (48, 64, 3)


# ----------------------------------------------------------------------------- preprocessing


def test_random_crop_area_and_aspect():
    encoded = jpeg_bytes(noise(300, 400))
    areas, aspects = [], []
    for i in range(200):
        crop = data.decode_and_random_crop(encoded, tf.constant([i, 7]))
        h, w, c = crop.shape
        assert c == 3
        areas.append(h * w / (300 * 400))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert areas.min() < 0.2 and areas.max() > 0.6  # the whole range is used
    # aspect within 3/4..4/3, up to the rounding of whole pixels
    assert aspects.min() >= 0.75 - 0.03 and aspects.max() <= 4 / 3 + 0.03


def test_fused_crop_equals_decode_then_crop():
    pixels = noise(96, 128)
    for subsampling, tolerance in ((0, 0), (2, 8)):  # 4:4:4 exact; 4:2:0 chroma edges
        encoded = jpeg_bytes(pixels, quality=90, subsampling=subsampling)
        seed = tf.constant([3, 4])
        fused = data.decode_and_random_crop(encoded, seed).numpy().astype(int)
        plain = data.decode_and_random_crop(encoded, seed, fused=False).numpy().astype(int)
        assert fused.shape == plain.shape and fused.shape != (96, 128, 3)
        assert np.abs(fused - plain).max() <= tolerance
        assert np.abs(fused - plain).mean() < 0.5


def test_center_crop_is_the_middle_875():
    # a PNG (exact pixels) whose value encodes the column: the crop's columns tell where it is
    height, width = 100, 200
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.arange(width)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    crop = data.decode_and_center_crop(jpeg_bytes(pixels, fmt="PNG")).numpy()
    assert crop.shape == (87, 87, 3)  # 87.5% of the shorter side, square
    assert crop[0, 0, 0] == (200 - 87 + 1) // 2 and crop[0, 0, 1] == (100 - 87 + 1) // 2
    image = data.eval_preprocess(jpeg_bytes(pixels, fmt="PNG"), 87).numpy()
    np.testing.assert_allclose(image, crop / 127.5 - 1, atol=1e-5)
    fused = data.decode_and_center_crop(jpeg_bytes(pixels, quality=95))
    assert fused.shape == (87, 87, 3)


def test_odd_files_convert_or_skip():
    colour = np.array(COLOURS[0], float)
    names = list(ODD)
    encoded = tf.constant([ODD[name][0](COLOURS[0]) for name in names])
    images, ok = data.attempt_each(lambda e: data.eval_preprocess(e, 32), (encoded,))
    assert images.shape == (len(names), 32, 32, 3)
    assert ok.numpy().tolist() == [ODD[name][1] for name in names]
    for name, image, decoded in zip(names, images.numpy(), ok.numpy()):
        if not decoded:
            assert not image.any()  # zeros in a failed row
            continue
        pixels = (image + 1) * 127.5
        assert pixels.shape == (32, 32, 3)
        if name == "gray.JPEG":  # one luminance in all three channels
            assert np.ptp(pixels, axis=-1).max() < 1
        else:  # CMYK converted back to (about) the RGB colour; PNG exact
            assert np.abs(pixels.mean(axis=(0, 1)) - colour).max() < 12, name


def test_train_dataset_skips_and_counts_bad_files(folder):
    source = data.folder_source(folder, "train")
    ds = data.train_dataset(source, 4, 32, seed=1, deterministic=True, repeat=False,
                            drop_remainder=False)
    labels = []
    for images, batch_labels in ds:
        assert images.dtype == tf.float32 and images.shape[1:] == (32, 32, 3)
        assert -1 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1
        labels += batch_labels.numpy().tolist()
    assert len(labels) == source.num_examples - 2  # truncated and garbage dropped
    assert sorted(os.path.basename(f) for f in ds.skip_log.files) == [
        "garbage.JPEG", "truncated.JPEG"]
    assert ds.skip_log.take_new()[0] == 2 and ds.skip_log.take_new()[0] == 0
    list(ds)  # a second pass counts the skips again, as new events of the same files
    assert ds.skip_log.events == 4 and ds.skip_log.skipped == 2


@pytest.mark.parametrize("global_seed", [0, 3])
def test_skips_after_the_last_kept_image_are_counted(folder, global_seed):
    """Under these global seeds (set by earlier tests in a full run) the reshuffled second pass
    puts a bad file after the last good one: its skip is counted all the same. With
    drop_remainder the images of the dropped partial batch are never seen, but their skips are."""
    tf.random.set_seed(global_seed)
    try:
        source = data.folder_source(folder, "train")
        ds = data.train_dataset(source, 4, 32, seed=1, deterministic=True, repeat=False,
                                drop_remainder=False)
        for expected in (2, 4, 6):
            assert sum(len(y) for _, y in ds) == source.num_examples - 2
            assert ds.skip_log.events == expected and ds.skip_log.skipped == 2
        full = data.train_dataset(source, 4, 32, seed=1, deterministic=True, repeat=False)
        assert full.element_spec[0].shape == (4, 32, 32, 3)
        assert [len(y) for _, y in full] == [4] * ((source.num_examples - 2) // 4)
        assert full.skip_log.events == 2
    finally:
        tf.random.set_seed(None)


def test_eval_dataset_keeps_every_slot(folder):
    source = data.folder_source(folder, "train")
    ds = data.eval_dataset(source, 4, 32)
    assert int(ds.cardinality()) == 5  # known: progress bars and Keras see the length
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 4, 4, 1]  # 17 images, the last batch partial
    weights = np.concatenate([b[2] for b in batches])
    names = np.concatenate([[e["name"] for e in elements(source)]])
    assert sorted(os.path.basename(n.decode()) for n in names[weights == 0]) == [
        "garbage.JPEG", "truncated.JPEG"]
    assert ds.skip_log.skipped == 2
    padded = list(data.eval_dataset(source, 4, 32, pad=True).as_numpy_iterator())
    assert [len(b[1]) for b in padded] == [4] * 5
    np.testing.assert_array_equal(np.concatenate([b[2] for b in padded])[:17], weights)
    assert padded[-1][2][1:].tolist() == [0, 0, 0] and not padded[-1][0][1:].any()


def test_deterministic_mode_repeats_exactly(folder):
    source = data.folder_source(folder, "train")

    def first_batches(seed):
        ds = data.train_dataset(source, 5, 24, seed=seed, deterministic=True)
        return [b for b in ds.take(3).as_numpy_iterator()]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_cache_reads_files_once(tmp_path):
    root = make_imagenet_folder(tmp_path / "data", per_class=2, odd=False)
    source = data.folder_source(root, "train")
    ds = data.train_dataset(source, 2, 16, cache=True, repeat=False, deterministic=True)
    assert sum(len(y) for _, y in ds) == 6
    for wnid in WNIDS:  # the files are gone: a second epoch must come from the cache
        for path in (root / "train" / wnid).iterdir():
            path.unlink()
    assert sum(len(y) for _, y in ds) == 6
    uncached = data.train_dataset(source, 2, 16, repeat=False)
    with pytest.raises(tf.errors.NotFoundError):
        list(uncached)


def test_tf_data_service(folder):
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=address, port=0))
    source = data.folder_source(folder, "train")
    ds = data.train_dataset(source, 4, 32, data_service=dispatcher.target)
    batches = list(ds.take(12).as_numpy_iterator())
    assert all(x.shape == (4, 32, 32, 3) for x, _ in batches)
    # 48 images from 15 decodable files: each file read ~3 times, each bad one counted, named
    assert ds.skip_log.skipped == 2 and ds.skip_log.events >= 4
    with pytest.raises(ValueError, match="do not mix"):
        data.train_dataset(source, 4, 32, data_service=dispatcher.target, deterministic=True)
    worker.stop()
    dispatcher.stop()


def test_input_context_gives_each_replica_its_share(folder):
    source = data.folder_source(folder, "train")
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=2)
    ds = data.train_dataset(source, 8, 16, input_context=ctx, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (4, 16, 16, 3)  # 8 per step, 4 per replica
