"""The manifest shared by the synthetic generators: determinism, idempotence, regeneration on
other parameters, redo after an interrupted run; one test run against each of the three formats."""

import hashlib
import json

import pytest

from pipelines import manifest
from pipelines.synthetic import coco as synthetic_coco, imagenet as synthetic_imagenet, voc as synthetic_voc

# generator, tiny parameters, other parameters, one required output,
# (train image glob, train images written with the other parameters)
FORMATS = {
    "coco": (synthetic_coco.generate, dict(num_train=4, num_val=2, image_size=48),
             dict(num_train=3, seed=1), "annotations/instances_val.json", ("train/*.jpg", 3)),
    "voc": (synthetic_voc.generate, dict(num_train=4, num_val=2, image_size=48),
            dict(num_train=3, num_classes=2), "VOC2012/ImageSets/Segmentation/trainval.txt",
            ("VOC2012/JPEGImages/2024_*.jpg", 3)),
    "imagenet": (synthetic_imagenet.generate,
                 dict(num_train_per_class=2, num_val_per_class=1, num_classes=2, image_size=48),
                 dict(num_train_per_class=1, seed=1), "LOC_val_solution.csv",
                 ("train/*/*.JPEG", 2)),
}


def files(root):
    """{relative path: (sha256, mtime_ns)} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def digests(root):
    return {path: sha for path, (sha, _) in files(root).items()}


@pytest.mark.parametrize("name", FORMATS)
def test_generate_is_deterministic_idempotent_and_regenerates(name, tmp_path):
    generate, params, other, required, (images, count) = FORMATS[name]
    root = generate(tmp_path / "a", **params)
    first = files(root)
    assert json.loads((root / "manifest.json").read_text())["format_version"] == 1
    assert not list(root.rglob("*.tmp*"))  # keras_mnv2.files.temporary_name: .a.tmp.json
    assert digests(generate(tmp_path / "b", **params)) == digests(root)  # deterministic

    generate(root, **params)
    assert files(root) == first  # a matching manifest: nothing rewritten

    (root / required).unlink()  # a run that stopped before its end left no such file
    generate(root, **params)
    assert digests(root) == digests(tmp_path / "b")

    generate(root, **dict(params, **other))
    written = json.loads((root / "manifest.json").read_text())
    assert all(written[key] == value for key, value in other.items())
    assert len(list(root.glob(images))) == count  # no stale images left
    assert digests(root) != digests(tmp_path / "b")


def test_reuse_or_wipe_keeps_a_folder_without_manifest(tmp_path):
    """No manifest (or an unreadable one) is not ours to wipe: files are kept and redone."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("x")
    assert not manifest.reuse_or_wipe(tmp_path, {"a": 1}, required=["data/x"], wipe=["data"])
    assert (tmp_path / "data" / "x").is_file()
    (tmp_path / "manifest.json").write_text("{not json")
    assert not manifest.reuse_or_wipe(tmp_path, {"a": 1}, required=["data/x"], wipe=["data"])
    assert not (tmp_path / "data").exists()  # a manifest, though unreadable: ours, stale
    manifest.write_manifest(tmp_path, {"a": 1})
    assert manifest.reuse_or_wipe(tmp_path, {"a": 1})
    assert not manifest.reuse_or_wipe(tmp_path, {"a": 1}, required=["data/x"])
