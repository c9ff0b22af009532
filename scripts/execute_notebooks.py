"""Run notebooks top to bottom and keep their outputs, for the documentation site.

    python scripts/execute_notebooks.py notebooks/01_classifier.ipynb [...]

Each notebook runs in a temporary working directory (its data, runs and figures go there), the
same way tests/test_notebooks.py runs them. The notebook file gets the outputs back, except the
stderr streams (TensorFlow's and absl's log lines, which name files on the machine that ran it),
and PNG figures over 150 KB are stored as 256-colour PNGs (same pixels size, smaller file).
Paths under the working directory are written relative to it (a job's metrics name their dataset
by its absolute path); an output that still names an absolute path on the machine (the repository,
/tmp/, /home/, ...) is an error: the committed notebooks carry no machine paths.
"""

import argparse
import base64
import io
import os
import pathlib
import re
import tempfile

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
MACHINE_PATH = re.compile(r"(?<![\w:/.])/(?:tmp|work|home|root|usr|opt|var|mnt|srv)/")


def _output_text(output):
    parts = [output.get("text", "")]
    for key, value in output.get("data", {}).items():
        if key.startswith("text/"):
            parts.append(value if isinstance(value, str) else "".join(value))
    return "".join(parts)


def _smaller_png(data, limit=150_000):
    """The base64 PNG ``data``, as a 256-colour PNG where it is over ``limit`` bytes encoded."""
    if len(data) <= limit:
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "png", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(data) else data


def _relative(output, workdir):
    """``output`` with every path under ``workdir`` written relative to it."""
    prefixes = sorted({str(pathlib.Path(workdir).resolve()) + "/", str(workdir) + "/"},
                      key=len, reverse=True)

    def strip(text):
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    if "text" in output:
        output.text = strip(output.text)
    for key, value in output.get("data", {}).items():
        if key.startswith("text/"):
            output.data[key] = strip(value if isinstance(value, str) else "".join(value))


def execute(path, timeout=1200):
    notebook = nbformat.read(path, as_version=4)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as workdir:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": workdir}}).execute()
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            cell.outputs = [out for out in cell.outputs
                            if not (out.output_type == "stream" and out.name == "stderr")]
            for out in cell.outputs:
                _relative(out, workdir)
                if "image/png" in out.get("data", {}):
                    out.data["image/png"] = _smaller_png(out.data["image/png"])
                text = _output_text(out)
                found = MACHINE_PATH.search(text) or re.search(re.escape(str(REPO)), text)
                if found:
                    start = max(0, found.start() - 80)
                    raise SystemExit(f"{path}: an output names a machine path: "
                                     f"{text[start:found.end() + 80]!r}")
    nbformat.write(notebook, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args()
    for path in args.notebooks:
        execute(path, args.timeout)
        print(f"{path}: executed, outputs kept")


if __name__ == "__main__":
    main()
