"""The two pictures of the README: Google's officially trained models, converted by
``keras_mnv2.convert.from_tflite``, on real photos, drawn by ``keras-mnv2 predict``.

    python scripts/readme_pictures.py [REAL_DIR]

REAL_DIR holds the official files and photos of google-coral/test_data (default: $KERAS_MNV2_REAL,
else ``shared/reference/real`` above the repository). Writes ``docs/predict_voc_official.png``
(Mobile DeepLabv3, PASCAL VOC, on a photo of a bird) and ``docs/predict_imagenet_official.png``
(the MobileNetV2 1.0/224 classifier's top-5 on a photo of a parrot, drawn at 256 px wide), each as
a 64-colour PNG.
"""

import json
import os
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from keras_mnv2 import convert  # noqa: E402
from pipelines import predict  # noqa: E402

PICTURES = (
    # job, official file, labels file, photo, width the photo is drawn at (None: as it is), output
    ("voc", "deeplabv3_mnv2_pascal_quant.tflite", "pascal_voc_segmentation_labels.txt",
     "bird_segmentation.bmp", None, "predict_voc_official.png"),
    # at 256 px wide, so that the top-5 text stays legible where the README shows the picture
    ("imagenet", "mobilenet_v2_1.0_224_quant.tflite", "imagenet_labels.txt", "parrot.jpg", 256,
     "predict_imagenet_official.png"),
)


def real_dir(given=None):
    found = given or os.environ.get("KERAS_MNV2_REAL") or next(
        (p / "shared/reference/real" for p in [REPO, *REPO.parents]
         if (p / "shared/reference/real").is_dir()), None)
    if found is None:
        raise SystemExit("no folder of official files: give REAL_DIR or set KERAS_MNV2_REAL")
    return pathlib.Path(found)


def main():
    from PIL import Image

    real = real_dir(sys.argv[1] if len(sys.argv) > 1 else None)
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        for job, official, labels_file, photo, width, output in PICTURES:
            model = convert.from_tflite(real / official)
            model.save(work / f"{job}.keras")
            # the class names predict writes, as a run would give them (background first)
            lines = (real / labels_file).read_text().splitlines()
            names = lines[:model.output_shape[-1]]
            run = work / f"run_{job}"
            run.mkdir()
            (run / "metrics.json").write_text(json.dumps({"class_names": names}))
            image_path = real / photo
            if width:
                image = Image.open(image_path).convert("RGB")
                image = image.resize((width, round(image.height * width / image.width)),
                                     Image.LANCZOS)
                image_path = work / f"{pathlib.Path(photo).stem}.png"
                image.save(image_path)
            report = predict.predict(job, str(work / f"{job}.keras"), [str(image_path)],
                                     out_dir=str(work / f"out_{job}"), run_dir=str(run))
            entry = report["results"][0]
            print(f"{official} on {photo}:", entry.get("classes") or
                  [(c["name"], round(c["score"], 3)) for c in entry["top5"]])
            image = Image.open(entry["annotated"]).convert("RGB")
            image.quantize(64, method=Image.Quantize.MEDIANCUT).save(REPO / "docs" / output,
                                                                    optimize=True)
            print(f"docs/{output}: {(REPO / 'docs' / output).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
