"""Notebook 03 runs top to bottom: a file of its own, so that `make test`'s two workers (a test
file each, ``--dist loadfile``) share the notebooks (tests/test_notebooks.py has the others)."""

import pytest

from test_notebooks import _text, execute


@pytest.mark.slow
def test_segmentation_notebook(tmp_path):
    import re

    notebook = execute("03_segmentation.ipynb", tmp_path)
    outputs = "\n".join(_text(cell) for cell in notebook.cells if cell.cell_type == "code")
    params = [float(p) for p in re.findall(r"aspp=\w+: ([\d.]+)M parameters", outputs)]
    assert abs(params[0] - 2.11) / 2.11 < 0.05 and abs(params[1] - 4.52) / 4.52 < 0.05
    first, last = map(float, re.search(r"loss: first epoch ([\d.]+), last epoch ([\d.]+)",
                                       outputs).groups())
    assert last < 0.8 * first
    miou = float(re.search(r"mean IoU after the short run: ([\d.]+)", outputs).group(1))
    assert miou > 0.2  # six classes; a model predicting only background scores about 1/6
    if "real reference files: absent" not in outputs:  # the official DeepLab on a real photo
        agreement, official_miou = map(float, re.search(
            r"pixel agreement with the official uint8 file ([\d.]+), mIoU against the mask "
            r"([\d.]+)", outputs).groups())
        assert agreement >= 0.98 and official_miou > 0.8
    diff = float(re.search(r"max \|Keras - TFLite\|: ([\d.e+-]+)", outputs).group(1))
    assert diff < 1e-4
