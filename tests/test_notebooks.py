"""The notebooks run top to bottom (executed with nbclient, outputs discarded)."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def execute(name, tmp_path):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return notebook


def _text(cell):
    return "".join(out.get("text", "") for out in cell.get("outputs", []))


@pytest.mark.slow
def test_classifier_notebook(tmp_path):
    notebook = execute("01_classifier.ipynb", tmp_path)
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "2,663,064 parameters" in outputs  # alpha 0.75 at 224, 1000 classes
    assert "max |Keras - TFLite|" in outputs
    if "real reference files: absent" not in outputs:  # the official file on real photos
        assert "official top-1 agreement: 4 of 4 photos" in outputs


@pytest.mark.slow
def test_detection_notebook(tmp_path):
    import re

    notebook = execute("02_detection.ipynb", tmp_path)
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    assert "2034 anchors" in outputs
    params = float(re.search(r"SSDLite 320, 80 classes: ([\d.]+)M parameters", outputs).group(1))
    assert abs(params - 4.3) / 4.3 < 0.05
    first, last = map(float, re.search(r"loss: first epoch ([\d.]+), last epoch ([\d.]+)",
                                       outputs).groups())
    assert last < 0.8 * first
    assert (tmp_path / "detections.png").stat().st_size > 10_000


@pytest.mark.slow
def test_qat_tflite_notebook(tmp_path):
    import re

    notebook = execute("04_qat_tflite.ipynb", tmp_path)
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    diff = float(re.search(r"max \|Keras 3 - tf_keras\| on a random image: ([\d.e+-]+)",
                           outputs).group(1))
    assert diff < 5e-5  # float32 round-off (seen: 6e-7 to 3e-6); a wrong weight copy is O(1)
    assert "none left float" in outputs
    # the QAT file computes in int8 throughout (its summary would name any float op)
    assert re.search(r"imagenet_qat\.tflite: qat \(float32 I/O, logits\), [\d.]+ MB, \d+ ops$",
                     outputs, re.M)
    ratios = [float(r) for r in re.findall(r"(?:int8|qat) file size / float32 file size: "
                                           r"([\d.]+)", outputs)]
    # int8 weights take a quarter of the bytes; biases and per-channel scales stay 32-bit
    assert len(ratios) == 2 and all(r < 0.45 for r in ratios)  # seen: 0.39
    top1 = {name: float(value) for name, value in re.findall(
        r"^(Keras float32|TFLite float32|TFLite PTQ int8|TFLite QAT int8): top-1 ([\d.]+)$",
        outputs, re.M)}
    assert len(top1) == 4
    float_top1 = top1["Keras float32"]
    assert float_top1 > 0.3  # ten classes: chance is 0.1
    assert abs(top1["TFLite float32"] - float_top1) <= 0.004  # at most 2 of the 500 images
    # int8 within 5 points of float after the brief run (seen: -2.0 to +1.0 points); an int8
    # model that has lost what the float one learned falls toward chance, 0.1
    assert top1["TFLite PTQ int8"] > float_top1 - 0.05
    assert top1["TFLite QAT int8"] > float_top1 - 0.05
    assert (tmp_path / "runs" / "imagenet" / "deploy.png").stat().st_size > 10_000
    assert "TFLite_Detection_PostProcess ops: 1" in outputs
    # the same file in MediaPipe Tasks, through the metadata export_tflite writes
    assert "outputs: category, location, number of detections, score" in outputs
    from pipelines.predict import mediapipe_python

    if mediapipe_python() is not None:
        found = re.search(r"MediaPipe [\d.]+: (\d+) detections, LiteRT (\d+); best: (.+) "
                          r"([\d.]+) \(LiteRT (.+) ([\d.]+)\)", outputs)
        assert found, "no MediaPipe line"
        mp_count, lite_count, mp_name, mp_score, lite_name, lite_score = found.groups()
        assert int(mp_count) == int(lite_count) > 0 and mp_name == lite_name
        assert abs(float(mp_score) - float(lite_score)) < 2e-3
