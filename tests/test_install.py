"""The wheel carries the library, the pipelines and the ``keras-mnv2`` command, and nothing of the
tests: built from a copy of the sources, installed into a fresh virtual environment, run from
there.

To stay offline and quick, the fresh environment gets the dependencies of this one through a
``.pth`` file (a plain path line: the environment's own ``.pth`` files, among them an editable
install of this checkout, are not processed), and the wheel is installed with ``--no-deps``:
what is checked is what the wheel itself holds.
"""

import email.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "keras_mnv2", "pipelines")
# Not a dependency of the library: test, benchmark, docs and backend tools are extras.
NOT_REQUIRED = ("pytest", "nbclient", "nbformat", "ipykernel", "keras-cv", "mkdocs", "jax",
                "torch", "setuptools", "wheel")


def _run(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the sources (the checkout gets no build/ or egg-info)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--wheel-dir", str(work / "dist"), str(source)])
    (found,) = (work / "dist").glob("keras_mnv2-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_the_packages_the_command_and_the_license(wheel):
    import keras_mnv2

    assert wheel.name.startswith(f"keras_mnv2-{keras_mnv2.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    for module in ("keras_mnv2/__init__.py", "keras_mnv2/detection/ssdlite.py",
                   "keras_mnv2/deploy/export.py", "pipelines/cli.py",
                   "pipelines/mediapipe_runner.py", "pipelines/jobs/detection.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]
    assert f"{info}/licenses/LICENSE" in names
    assert re.search(r"^keras-mnv2 = pipelines\.cli:main$", entry_points, re.M)
    assert metadata["Version"] == keras_mnv2.__version__
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert any(r.startswith("tensorflow") for r in required)
    for name in NOT_REQUIRED:
        assert not [r for r in required if re.match(rf"{re.escape(name)}\b(?![-_])", r)], name
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"test", "bench", "jax", "torch", "docs"} <= extras


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_environment_runs_keras_mnv2(wheel, tmp_path):
    import keras_mnv2

    env = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    site = pathlib.Path(_run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"]).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", str(wheel)])

    # run from an empty folder: nothing of the checkout is importable from there
    where = _run([str(python), "-c", "import keras_mnv2, pipelines.cli; "
                  "print(keras_mnv2.__file__); print(pipelines.cli.__file__); "
                  "print(keras_mnv2.__version__)"], cwd=tmp_path).split()
    assert all(pathlib.Path(p).is_relative_to(site) for p in where[:2]), where
    assert where[2] == keras_mnv2.__version__

    command = env / "bin" / "keras-mnv2"
    assert command.exists()
    help_text = _run([str(command), "--help"], cwd=tmp_path)
    for name in ("train", "export", "qat", "predict", "convert", "profile"):
        assert name in help_text
    if "--version" in help_text:
        assert keras_mnv2.__version__ in _run([str(command), "--version"], cwd=tmp_path)
    profile = _run([str(command), "profile", "--alpha", "0.35", "--size", "96"], cwd=tmp_path)
    assert re.search(r"total: [\d,]+ parameters .* MAdds", profile), profile[-500:]
